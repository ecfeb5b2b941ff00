"""Prepares a config's corpus (tokenise, pack, write array_record files under data.data_dir) without training.

    python launch/prepare_data.py --config=configs/text_files.py --config.data.files='corpus/*.txt'
    python launch/prepare_data.py --config=configs/owt_small.py --config.data.files='owt/*.parquet' \
        --config.data.tokenizer_path=gpt2/tokenizer.json --config.data.data_dir=/data/proseco

Training builds the same data on first use; preparing it beforehand lets one machine do it once (with
--config.data.num_proc processes) for a pod whose hosts then only read it: prepare into a local
data_dir, copy that directory (e.g. `gsutil -m rsync -r`) to the same path on every host (or to a bucket
they mount), and give the hosts the same data flags (the corpus's directory name is a digest of them; the
source files need not be there). Preparation is atomic: an interrupted run leaves nothing that a later
run reads, and rerunning the command starts it over. A corpus already prepared so is only opened.
"""

from ml_collections import config_flags

from proseco_jax import cli, config_base
from proseco_jax.data import datasets

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_base.resolve(cli.config_or_fail(_CONFIG))
    data = datasets.load(config.data)
    where = data.directory or config.data.directory
    tokenizer = f", tokenizer {data.tokenizer.name} (V={data.tokenizer.vocab_size})" if data.tokenizer else ""
    print(f"{config.data.name} is ready in {where}{tokenizer}", flush=True)
    for split, source in data.sources.items():
        print(f"  {split}: {len(source):,} sequences of {config.data.length} tokens", flush=True)


if __name__ == "__main__":
    cli.run(main)
