"""The built-in bases: small models cepo builds and warms up itself, and the registry-shipped assets.

- :mod:`.tiny`: the ~1M-parameter Llama-family model and its character tokenizer, and tiny
  Qwen-VL-family models, built from a config;
- :mod:`.warmup`: the supervised warm-up that makes every built-in base (``builtin``,
  ``builtin-filler``, ``builtin-vl``), cached by the hash of its settings, and
  :func:`~cepo.bases.warmup.resolve_model_path`;
- :mod:`.warmup_kinds`: the two kinds of base (text, vision-language): their settings, cache
  keys, and what differs between them (model, task, loss, stop);
- :mod:`.warmup_target`: the stop at a target accuracy;
- :mod:`.assets`: models and data that registry packages ship (``asset:`` paths).

The built-in tasks they are warmed up on live in :mod:`cepo.tasks`.
"""
