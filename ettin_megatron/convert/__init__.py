"""Megatron <-> Hugging Face conversion of Ettin models.

* ``hf_mapping``      tensor names / layouts and configs, both directions (TP = PP = 1 state dicts)
* ``export_hf``       ``megatron_to_hf(load, output, tokenizer=None, attention=None, dtype=None)``
* ``import_hf``       ``hf_to_megatron(hf_dir, save, attention=None, iteration=0, target_tp=1, target_pp=1,
                      tokenizer=None)``
* ``averaging``       ``read_sources(paths)``, then ``average_checkpoints(sources, weights, save, ...)`` or
                      ``average_to_hf(...)``: the weighted mean of K checkpoints of one model, weights only
* ``verify``          ``verify_against_dir(model, hf_dir)``, ``verify_import(checkpoint, hf_dir)``: max logit diff
* ``megatron_side``   one-process world, ``load_megatron_model(path, attention=None)`` (any saved TP / PP)
* ``hf_files``        config.json checks, tokenizer, generation and sentence-transformers files
* ``safetensors_io``  streaming safetensors writer, lazy pickle-free reader
* ``pickle_guard``    refuses a dist checkpoint whose pickled index references anything but metadata

The command lines are ``tools/convert_checkpoint.py`` and ``tools/average_checkpoints.py``; user errors raise
``errors.ConfigError`` (one line).
"""
