"""Command-line entry point: ``python main.py {fit,validate,test,predict} --config experiments/<file>.yaml``.

The CLI itself lives in :mod:`lightning_modules.cli` (tools and benchmarks import it from there, never from
this file); the names below are re-exported for code that still does ``import main``.
"""

from lightning_modules.cli import (  # noqa: F401 - re-exported
    BASE_CONFIG,
    ROOT,
    SUBCOMMANDS,
    PaperCLI,
    RunExistsError,
    cli_main,
    configure_checkpoints,
    configure_loggers,
    experiment_name,
    find_user_error,
    has_hpc_checkpoint,
    main,
    refuse_to_overwrite,
    wandb_has_credentials,
    wandb_run_id,
)

if __name__ == "__main__":
    main()
