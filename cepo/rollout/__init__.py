"""Rollouts: engines (transformers, vLLM), the rollout batch, and the rollout DataModule."""
