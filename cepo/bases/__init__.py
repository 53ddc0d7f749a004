"""The built-in bases: small models cepo builds and warms up itself, and the registry-shipped assets.

- :mod:`.tiny`: the ~1M-parameter Llama-family model and its character tokenizer, and tiny
  Qwen-VL-family models, built from a config;
- :mod:`.warmup`: the supervised warm-up of the built-in text base (``builtin``), cached by the
  hash of its settings, and :func:`~cepo.bases.warmup.resolve_model_path`;
- :mod:`.warmup_vl`: the same recipe for the vision-language base (``builtin-vl``);
- :mod:`.assets`: models and data that registry packages ship (``asset:`` paths).

The built-in tasks they are warmed up on live in :mod:`cepo.tasks`.
"""
