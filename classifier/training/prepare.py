"""`python -m classifier.training.prepare [--config FILE]`: train the routing model now and cache it.

The daemon trains its topic model at first start (about a minute on 2 cores: embedding some 4,000 training texts,
then fitting) and caches it under `[classifier] cache_dir`, keyed by data and model. `make setup` runs this right
after converting the embedder, so the first `make run` (and the first test that starts a daemon) loads the model
instead of training it. Running it again with nothing changed only loads the cached model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config import loader
from config.directory import load_directory
from config.errors import ConfigError

from ..embedding.embedder import EmbeddingThread, load_embedder
from .trainer import Router


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m classifier.training.prepare", description=__doc__.splitlines()[0])
    ap.add_argument("--config", metavar="FILE", help="the daemon's config file (default config/default.toml)")
    args = ap.parse_args(argv)
    try:
        settings = loader.load(Path(args.config) if args.config else None)
        cfg = settings.classifier
        if cfg.backend == "none":
            print("classifier backend is 'none': no model to train")
            return 0
        embedder = EmbeddingThread(load_embedder(cfg.backend, cfg.model, cfg.variant, cfg.embed_threads))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        router = Router(settings, load_directory(settings.data.agencies, settings.data.structure), embedder)
        router.load()
    finally:
        embedder.close()
    print(f"routing model {router.model_version} ready in {cfg.cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
