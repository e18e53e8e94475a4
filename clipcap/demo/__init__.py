"""clipcap.demo: ``clipcap demo``, the whole chain offline on synthetic data.

``synthetic`` draws the captioned shapes (torch-free), ``pretrain`` makes the small CLIP and GPT-2
it starts from, ``run`` trains both variants, exports, captions and scores them.
"""
