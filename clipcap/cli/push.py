"""`clipcap push`: publish a bundle to a Hugging Face Hub model repository, with a model card."""

from __future__ import annotations

HELP = "publish a bundle to the Hugging Face Hub, with a generated model card"
DESCRIPTION = (
    "Check the bundle as the runtime does (manifest, every file's SHA-256), then upload it to a "
    "Hub model repository in one commit, with a README.md model card read off its manifest: what "
    "it is, the source checkpoint's format, precision, CLIP, decoding defaults, the verification "
    "against PyTorch, and how to caption with it. Needs a Hub token (`hf auth login`)."
)
EPILOG = """
Then anyone captions with it by name:
  clipcap caption photo.jpg --bundle hf:OWNER/REPO          (or hf:OWNER/REPO/FOLDER)
  Captioner("hf:OWNER/REPO")
"""


def add_arguments(parser) -> None:
    parser.add_argument("bundle", help="the bundle directory (clipcap export's output)")
    parser.add_argument("repo", metavar="OWNER/REPO", help="the Hub model repository (made if missing)")
    parser.add_argument(
        "--folder", default="", metavar="PATH", help="a folder in the repository, for several bundles in one"
    )
    parser.add_argument("--private", action="store_true", help="make the repository private if it is new")
    parser.add_argument("--revision", metavar="BRANCH", help="the branch to commit to (default: main)")
    parser.add_argument("--message", metavar="TEXT", help="the commit message")


def run(args) -> int:
    from clipcap.hub import push_bundle

    url = push_bundle(
        args.bundle,
        args.repo,
        folder=args.folder,
        private=args.private,
        revision=args.revision,
        message=args.message,
    )
    where = f"hf:{args.repo}" + (f"/{args.folder.strip('/')}" if args.folder else "")
    print(f"pushed {args.bundle} to {url}\ncaption with: clipcap caption IMAGE --bundle {where}")
    return 0
