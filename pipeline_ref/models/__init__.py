"""The models a run trains, and what is known of a model before it is cut into stages (layer: models).

    zoo.py              the toy factories (mlp, tiny_gpt, text_gpt), load_factory, check_model, probe_model,
                        reference_step (one device, the ground truth), to_dtype
    hf_models.py        whole-module factories: Hugging Face GPT-2 and Llama, a net with a skip connection
    text_data.py        real text, offline; batches.py: a run's data per step, and each rank's share of it
    async_reference.py  what PipeDream and PipeDream-2BW compute, in one process

The zoo's names are the package's face: ``models.mlp(...)``, ``--model pipeline_ref.models:mlp``.
"""
from pipeline_ref.models.zoo import (ALIASES, FACTORIES, MEASURE_MLP, check_model, load_factory,
                                     mlp,  # noqa: F401
                                     next_token_loss, probe_model, reference_step, text_gpt, tiny_gpt,
                                     tiny_gpt_tied, to_dtype)
