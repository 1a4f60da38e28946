"""``edgeclip lab``: run experiments written as data (``experiments/*.yaml``), list their stages and tasks."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True, help="Experiments as data: run a lab YAML, see its stages, list the tasks."
)


@app.command("run")
def lab_run(
    experiment: Path = typer.Argument(..., help="an experiment file (experiments/NAME.yaml)"),
    only: list[str] = typer.Option(
        [], help="run only these stages, 'a,b' or repeated (earlier ones must have run; later ones wait)"
    ),
    set_: list[str] = typer.Option([], "--set", help="override key.sub=value (repeatable)"),
):
    """Run every stage not yet done (a killed stage resumes), then write the results JSON."""
    from edgeclip.lab.experiment import run_experiment

    names = [n for o in only for n in o.split(",") if n.strip()]
    run_experiment(experiment, set_, names or None, log=lambda s: typer.echo(s, err=True))


@app.command("stages")
def lab_stages(experiment: Path = typer.Argument(...), set_: list[str] = typer.Option([], "--set")):
    """Each stage of an experiment with its task and whether it has run."""
    from edgeclip.lab.experiment import load_experiment

    exp = load_experiment(experiment, set_)
    for st in exp["stages"]:
        done = (Path(exp["workdir"]) / st["name"] / "stage.json").is_file()
        typer.echo(f"{st['name']:24s} {st['task']:20s} {'done' if done else 'to run'}")


@app.command("tasks")
def lab_tasks():
    """The tasks a stage can run."""
    from edgeclip.lab.experiment import TASKS

    for k, h in TASKS.describe().items():
        typer.echo(f"{k:20s} {h}")
