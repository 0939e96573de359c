"""``tfvae <command> [options]``: the installed command line, one entry point with subcommands that
do exactly what ``python scripts/<command>.py`` does (both run ``tfvae.commands.<command>.main``).
TensorFlow is imported only once a command runs, so ``tfvae --help`` and ``tfvae <command> --help``
are instant."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("train", "train a (beta-)VAE on healthy slices"),
    "evaluate": ("evaluate", "score the test split with every predictor; tables, maps, figures"),
    "localize": ("localize", "anomaly maps, masks and a report for new scans"),
    "calibrate": ("calibrate", "thresholds from healthy scans of your own scanner"),
    "tune": ("tune", "Keras Tuner search over beta, latent size, ..."),
    "reproduce": ("reproduce", "the paper's tables over seeds"),
    "benchmark": ("benchmark", "throughput of training, maps, projection, pipeline, metrics"),
    "export": ("export", "the model as a TensorFlow SavedModel"),
    "preprocess": ("preprocess", "raw heads -> skull-stripped brains in template space (tfvae[preprocess])"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: tfvae <command> [options]   (tfvae <command> --help for its options; tfvae --version)", "",
             "commands:"]
    lines += [f"  {name:{width}s}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from tfvae import __version__

        print(f"tfvae {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tfvae: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    sys.argv = [f"tfvae {name}", *rest]  # so that argparse names the command in its messages
    module = importlib.import_module(f"tfvae.commands.{COMMANDS[name][0]}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
