"""Command groups of the ``slide2expr`` CLI, one module each; each module adds its commands to ``_app.app``.

Commands are thin: they parse arguments and call a public function that tests and notebooks call too.
Heavy imports (torch, timm, lightgbm) happen inside the command functions so ``--help`` stays fast.
"""
