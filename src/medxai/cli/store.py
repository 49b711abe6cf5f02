"""``medxai store explain | score | info``: dataset-scale explanations and scores in a sharded,
resumable store, one shard per rank under torchrun (the commands live in ``medxai.distributed.cli``)."""

from medxai.distributed import cli as _store_cli  # noqa: F401  (registers the commands on the app)
