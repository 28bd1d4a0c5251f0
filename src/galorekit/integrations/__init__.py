"""galorekit inside other people's training loops (each module imports its library lazily):

- ``galorekit.integrations.transformers``: ``GaLoreTrainer`` / ``with_galore(TrainerClass)`` run
  ``TrainingArguments(optim="galore_*", optim_target_modules=..., optim_args=...)`` on galorekit's
  optimizers (layer-wise with gradient accumulation and DDP included), and
  ``galore_optimizer(args, model)`` builds that optimizer for any loop;
- ``galorekit.integrations.trl``: ``GaLoreSFTTrainer``, TRL's ``SFTTrainer`` the same way;
- ``galorekit.integrations.galore_torch_compat``: an opt-in that makes ``import galore_torch``
  return galorekit's optimizers with galore-torch's constructor signatures;
- ``galorekit.integrations.deepspeed``: which DeepSpeed configurations GaLore can run under, and
  the refusal of the others.
"""
