"""cepo: token-level credit assignment for RL with verifiable rewards, on PyTorch Lightning.

Entry points: ``cepo fit|validate|warmup|sweep`` (``cepo.__main__``); the LightningModule
``cepo.module.RLModule``; the DataModule ``cepo.rollout.datamodule.RolloutDataModule``; credit
rules in ``cepo.credit``.
"""

__version__ = "0.1.0"
