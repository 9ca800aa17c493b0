"""``nas-cli search-rl``: neural architecture search where an agent proposes child networks.

Each child is trained briefly by the one training engine (the ``optim`` / ``sched`` groups) and its
validation accuracy (``child.score``: the best or the final epoch's) is the controller's reward (or
``reward=synthetic``: a fixed score, for comparing strategies in seconds). Controllers (``conf/controller/``):
``reinforce`` (Zoph & Le 2017; in ``zoph`` or ``enas_macro``), ``metaqnn`` (Baker et al. 2017), ``random``,
``evolution``; each searches a ``space`` (``zoph``, ``metaqnn`` or ``enas_macro``).
``reward=shared`` is ENAS (Pham et al. 2018, ``nas_cli/nas/rl/enas.py``): no child trains on its own, every child
of ``space=enas_macro`` is a path through one network whose weights they share.
``search.executor``: where children train: ``inline`` (this process or ``search.workers`` processes) or as
submitit jobs (``local``, ``debug``, ``slurm``), ``search.batch`` a round (``nas_cli/nas/rl/executors.py``).
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.config_values import as_dict
from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError
from nas_cli.nas.rl import enas
from nas_cli.nas.rl.children import ChildOptions, Evaluator, load_data
from nas_cli.nas.rl.controllers.reinforce import Reinforce
from nas_cli.nas.rl.executors import EXECUTORS, JobRunner, SlurmOptions
from nas_cli.nas.rl.search import HEADLINE, search
from nas_cli.nas.rl.spaces import EnasMacroSpace
from nas_cli.runs.options import RunOptions

COMMAND = "search-rl"


def task(cfg: DictConfig) -> dict:
    if cfg.reward == "shared":
        return _shared(cfg)
    opts = RunOptions.from_config(cfg)
    child = ChildOptions(**as_dict(cfg.child))
    data_config = as_dict(cfg.data)
    data = load_data(data_config, child, opts.seed)
    space = instantiate(cfg.space, in_shape=data.in_shape, _convert_="all")
    controller = instantiate(cfg.controller, space=space, seed=opts.seed, _convert_="all")
    evaluator = Evaluator(
        str(cfg.reward),
        as_dict(cfg.synthetic),
        opts.run_dir,
        opts.device,
        data,
        data_config,
        opts.seed,
        child,
        optimizer=instantiate(cfg.optim),
        schedule=instantiate(cfg.sched),
        workers=int(cfg.search.workers),
        runner=_runner(cfg, opts),
        job_device=str(cfg.device),
        proxy=as_dict(cfg.proxy),
    )
    children, trained = int(cfg.search.children), cfg.search.trained
    budget = {"search.children": children, **({"search.trained": trained} if trained is not None else {})}
    run = opts.run(COMMAND, budget=budget, headline=HEADLINE)
    return search(controller, evaluator, run, children, progress=opts.progress, trained=trained, batch=cfg.search.batch)


def _runner(cfg: DictConfig, opts: RunOptions) -> JobRunner | None:
    """The submitit runner of ``search.executor`` (None: ``inline``, children train in this process)."""
    kind = cfg.search.executor
    if kind not in EXECUTORS:
        raise UserError(f"search.executor={kind}: use {' | '.join(EXECUTORS)}")
    if kind == "inline":
        return None
    slurm = SlurmOptions(**as_dict(cfg.search.slurm))
    return JobRunner(kind, opts.run_dir, slurm, retries=int(cfg.search.retries), poll_s=float(cfg.search.poll_s))


def _shared(cfg: DictConfig) -> dict:
    """``reward=shared``: ENAS (``nas_cli/nas/rl/enas.py``), the children of ``space=enas_macro`` sharing the
    weights of one network, which the ``optim`` / ``sched`` groups train on the data's whole splits."""
    if not str(cfg.controller.get("_target_", "")).endswith(".Reinforce"):
        raise UserError("reward=shared trains ENAS's own REINFORCE controller (enas.controller.*): drop controller=")
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    options = enas.EnasOptions(**as_dict(cfg.enas))
    data = instantiate(cfg.data, seed=opts.seed)
    space = instantiate(cfg.space, in_shape=data.in_shape, _convert_="all")
    if not isinstance(space, EnasMacroSpace):
        raise UserError(f"reward=shared searches ENAS's macro space: use space=enas_macro, not space={space.kind}")
    controller = Reinforce(space, seed=opts.seed, **options.controller)
    net = enas.SharedNet(space, data.in_shape, data.num_classes).to(opts.device)
    optimizer = instantiate(cfg.optim)(params=net.parameters())
    run = opts.run(COMMAND, budget={"enas.epochs": options.epochs}, headline=enas.ENAS_HEADLINE)
    return enas.search(net, controller, data, optimizer, instantiate(cfg.sched), run, options, progress=opts.progress)
