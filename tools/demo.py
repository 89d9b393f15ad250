#!/usr/bin/env python
"""A local demo page for trained checkpoints: drop an image, see the overlay, the class shares or the instance list
with scores, and download the mask or instance PNG that tools/predict.py would write for it.

The page is served on 127.0.0.1 only (this machine); stop it with Ctrl-C. Several checkpoints can be given and
chosen in the page. Nothing to install beyond seg_ext (the standard library's HTTP server; see docs/analysis.md).

Examples:
    python tools/demo.py --checkpoint runs/x/best.pt
    python tools/demo.py --checkpoint runs/unet/best.pt --checkpoint runs/ws/best.pt --port 7861

Exit codes: 0 stopped with Ctrl-C; 2 bad input (a checkpoint that cannot be read, a port in use).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, action="append", required=True,
                        help="a best.pt or last.pt of a training run (give it several times to offer several)")
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def main(args: argparse.Namespace) -> int:
    from seg_ext.errors import SegExtError
    from seg_ext.tasks.demo import DemoServer, load_models

    setup_logging()
    if not 0 <= args.port <= 65535:
        raise SegExtError(f"--port is {args.port}; expected a port number from 0 to 65535")
    models = load_models(args.checkpoint, args.device)
    server = DemoServer(models, args.host, args.port)
    print(f"seg_ext demo: serving {len(models)} checkpoint(s) on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
