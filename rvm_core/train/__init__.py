"""Pretraining: config, loop, distributed backends, optimizer, checkpoints and reporting.

Entry points: ``rvm pretrain --config training/configs/<name>.yaml [key=value ...] [--resume]``
or ``rvm_core.train.loop.train(rvm_core.train.config.load_config(path, overrides))``.
Nothing is imported here so ``rvm --help`` stays fast.
"""
