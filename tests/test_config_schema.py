"""The typed schema every shipped config writes in its own YAML (``nas_cli.schema``): each file reads, every key of
every command's config has a rule and a default, every shipped combination (a command's defaults, each group option
it takes, each preset) keeps its rules, and a bad value is exactly one line that names its key."""

from __future__ import annotations

import copy
from functools import cache

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from nas_cli import schema
from nas_cli.cli import HYDRA_COMMANDS
from nas_cli.config_files import config_dir
from nas_cli.hydra_bridge import belongs, preset_command

CONFIGS = {name: name.replace("-", "_") for name in HYDRA_COMMANDS}  # command -> primary config


def composed(command: str, overrides: tuple[str, ...] = ()) -> tuple[dict, dict[str, schema.Rule], dict]:
    """The plain config ``command`` composes with ``overrides``, the rules that speak for it, and the group
    options on offer (group -> names), as the command line would compose it. A group choice that is already the
    command's default is dropped first, so that the same config is composed once."""
    if overrides:
        defaults = _composed(command, ())[3]
        overrides = tuple(o for o in overrides if o.partition("=")[2] != defaults.get(o.partition("=")[0], "="))
    return _composed(command, overrides)[:3]


@cache
def _composed(command: str, overrides: tuple[str, ...]) -> tuple[dict, dict[str, schema.Rule], dict, dict]:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose(CONFIGS[command], overrides=list(overrides), return_hydra_config=True)
            loader = GlobalHydra.instance().config_loader()
            choices = dict(cfg.hydra.runtime.choices)
            options = {g: loader.get_group_options(g) for g in choices if not g.startswith("hydra")}
    finally:
        GlobalHydra.instance().clear()
    rules = schema.rules_for(CONFIGS[command], choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True), rules, options, choices


def leaves(node: dict, rules: dict, prefix: str = ""):
    """The dotted keys of ``node`` as the schema sees them: a key with a rule is one value, even a mapping."""
    for key, value in node.items():
        if key in schema.HYDRA_KEYS:
            continue
        dotted = prefix + str(key)
        if dotted not in rules and isinstance(value, dict) and value:
            yield from leaves(value, rules, dotted + ".")
        else:
            yield dotted


def lines(command: str, overrides: tuple[str, ...] = ()) -> list[str]:
    plain, rules, _ = composed(command, overrides)
    return [v.line() for v in schema.violations(plain, rules)]


def option_rounds() -> list[tuple[str, tuple[str, ...]]]:
    """(command, overrides) that together compose every option of every group a command composes with that
    command (where the option is the command's: see ``belongs``); each round picks the next option of every group
    at once, so that a few compositions cover them all. Hydra's own groups are not the schema's."""
    out = []
    for command in CONFIGS:
        _, _, options, choices = _composed(command, ())
        others = {
            group: [o for o in names if belongs(group, o, command) and o != choices.get(group)]
            for group, names in options.items()
            if group != "experiment"
        }
        for k in range(max(map(len, others.values()), default=0)):
            out.append((command, tuple(f"{g}={names[k]}" for g, names in others.items() if k < len(names))))
    return out


ROUNDS = option_rounds()
PRESETS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


# -- the files ----------------------------------------------------------------------------------------------------

FILES = sorted(config_dir().rglob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(config_dir()).as_posix() for p in FILES])
def test_every_shipped_yaml_reads(path):
    schema.read_file(path)


@pytest.mark.parametrize("command", list(CONFIGS))
def test_every_key_has_a_typed_rule_and_a_default(command):
    plain, rules, _ = composed(command)
    keys = list(leaves(plain, rules))
    assert [k for k in keys if k not in rules] == [], "keys no shipped file declares"
    untyped = [k for k in keys if rules[k].kinds == {"any"} and not rules[k].written]
    assert untyped == [], "keys whose rule is only 'anything' (a null default with no rule written)"
    for key in keys:
        rule, default = rules[key], rules[key].default
        if default == "???" or "${" in str(default):  # a value the user must give, or one taken from another key
            continue
        assert rule.accepts(default), f"{key}: its own default {default!r} breaks {{{rule.describe()}}} ({rule.source})"


# -- what ships keeps its rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(CONFIGS))
def test_a_command_default_config_keeps_its_rules(command):
    assert lines(command) == []


@pytest.mark.parametrize("command, overrides", ROUNDS, ids=[f"{c}:{','.join(o)}" for c, o in ROUNDS])
def test_every_group_option_keeps_the_rules_with_its_command(command, overrides):
    assert lines(command, overrides) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_keeps_the_rules_with_its_command(preset):
    assert lines(preset_command(preset), (f"experiment={preset}",)) == []


def test_every_command_and_option_is_covered():
    """The cases above reach every group the commands compose, and every option file under conf/."""
    files = {p.relative_to(config_dir()).with_suffix("").as_posix() for p in config_dir().rglob("*.yaml")}
    defaults = {f"{g}/{o}" for command in CONFIGS for g, o in _composed(command, ())[3].items() if o}
    rounds = {o.replace("=", "/") for _, overrides in ROUNDS for o in overrides}
    covered = set(CONFIGS.values()) | defaults | rounds | {f"experiment/{p}" for p in PRESETS}
    assert {f for f in files - covered if not f.startswith("hydra/")} == set()


# -- a bad value is one line naming its key -----------------------------------------------------------------------

BAD = [  # (command, group choices, key, bad value, the one line it gives)
    # trainer (train, search-darts, detect)
    ("train", (), "trainer.epochs", 1.5, "trainer.epochs=1.5: expected a whole number ≥ 1"),
    ("train", (), "trainer.epochs", 0, "trainer.epochs=0: expected a whole number ≥ 1"),
    ("search-darts", (), "trainer.epochs", -3, "trainer.epochs=-3: expected a whole number ≥ 1"),
    ("train", (), "trainer.last_n", 0, "trainer.last_n=0: expected a whole number ≥ 1"),
    ("train", (), "trainer.precision", "fp8", "trainer.precision=fp8: expected one of fp32, bf16, fp16"),
    ("train", (), "trainer.grad_clip", 0, "trainer.grad_clip=0: expected a number > 0 or null"),
    ("train", (), "trainer.loss_ema", 0.0, "trainer.loss_ema=0.0: expected a number in (0, 1]"),
    ("train", (), "trainer.early_stop.patience", 0, "trainer.early_stop.patience=0: expected a whole number ≥ 1"),
    ("train", (), "trainer.early_stop.mode", "up", "trainer.early_stop.mode=up: expected min or max or null"),
    ("train", (), "trainer.best.min_delta", -0.1, "trainer.best.min_delta=-0.1: expected a number ≥ 0"),
    ("train", (), "trainer.best.monitor", 3, "trainer.best.monitor=3: expected a string or null"),
    # data
    ("train", (), "data.batch_size", 0, "data.batch_size=0: expected a whole number ≥ 1"),
    ("detect", (), "data.batch_size", 2.5, "data.batch_size=2.5: expected a whole number ≥ 1"),
    ("train", (), "data.val_size", 1.5, "data.val_size=1.5: expected a number in (0, 1) or a whole number ≥ 1"),
    ("train", (), "data.val_size", 0, "data.val_size=0: expected a number in (0, 1) or a whole number ≥ 1"),
    (
        "train",
        ("data=cifar10",),
        "data.val_size",
        -1,
        "data.val_size=-1: expected a number in [0, 1) or a whole number ≥ 0",
    ),
    (
        "detect",
        ("data=coco",),
        "data.val_size",
        1.0,
        "data.val_size=1.0: expected a number in [0, 1) or a whole number ≥ 0",
    ),
    (
        "train",
        ("data=imagefolder",),
        "data.val_size",
        0,
        "data.val_size=0: expected a number in (0, 1) or a whole number ≥ 1 or null",
    ),
    ("train", (), "data.data_seed", -1, "data.data_seed=-1: expected a whole number ≥ 0"),
    ("train", (), "data.subset", 0, "data.subset=0: expected a whole number ≥ 1 or null"),
    ("train", (), "data.on_device", "gpu", "data.on_device=gpu: expected auto or true or false"),
    ("train", (), "data.augment.crop_padding", 1.5, "data.augment.crop_padding=1.5: expected a whole number ≥ 0"),
    (
        "train",
        (),
        "data.augment.resized_crop_scale",
        [0.0, 1.0],
        "data.augment.resized_crop_scale=[0.0, 1.0]: expected a list of numbers in (0, 1] or null",
    ),
    ("train", (), "data.augment.mixup_alpha", -1.0, "data.augment.mixup_alpha=-1.0: expected a number ≥ 0"),
    ("train", (), "data.augment.cutout", -4, "data.augment.cutout=-4: expected a whole number ≥ 0"),
    ("train", ("data=cifar100",), "data.label", "medium", "data.label=medium: expected fine or coarse"),
    ("train", ("data=imagefolder",), "data.decode", "gpu", "data.decode=gpu: expected cpu or cuda"),
    (
        "train",
        ("data=imagefolder",),
        "data.num_workers",
        -1,
        "data.num_workers=-1: expected a whole number ≥ 0 or null",
    ),
    ("train", ("data=synthetic",), "data.num_classes", 1, "data.num_classes=1: expected a whole number ≥ 2"),
    (
        "detect",
        (),
        "data.classes",
        ["hexagon"],
        "data.classes=[hexagon]: expected a list drawn from square, circle, "
        "triangle, square_outline, circle_outline, digit or null",
    ),
    ("detect", (), "data.max_overlap", 1.5, "data.max_overlap=1.5: expected a number in [0, 1]"),
    (
        "detect",
        ("data=coco",),
        "data.image_size",
        0,
        "data.image_size=0: expected a whole number ≥ 1 or a list of whole numbers ≥ 1",
    ),
    # model: widths, probabilities, choices
    ("train", (), "model.width", 0, "model.width=0: expected a whole number ≥ 1"),
    ("train", (), "model.dropout", 1.0, "model.dropout=1.0: expected a number in [0, 1)"),
    ("train", (), "model.dropconnect", -0.1, "model.dropconnect=-0.1: expected a number in [0, 1)"),
    (
        "train",
        (),
        "model.init",
        "he",
        "model.init=he: expected one of default, kaiming, xavier, orthogonal, zeros, constant",
    ),
    ("train", (), "model.fmp_ratio", 2.0, "model.fmp_ratio=2.0: expected a number in (1, 2)"),
    ("train", ("model=mlp",), "model.depth", -1, "model.depth=-1: expected a whole number ≥ 0"),
    ("train", ("model=resnet18",), "model.drop_path", 1.0, "model.drop_path=1.0: expected a number in [0, 1)"),
    (
        "train",
        ("model=xnor_resnet18",),
        "model.ste",
        "identity",
        "model.ste=identity: expected one of clipped, steep, swishsign, polynomial",
    ),
    ("train", ("model=darts",), "model.auxiliary_weight", -0.4, "model.auxiliary_weight=-0.4: expected a number ≥ 0"),
    ("detect", (), "model.stride", 16, "model.stride=16: expected 4 or 8"),
    # optim: learning rates, weight decay, momentum, betas
    ("train", (), "optim.lr", 0, "optim.lr=0: expected a number > 0"),
    ("search-rl", (), "optim.lr", -0.01, "optim.lr=-0.01: expected a number > 0"),
    ("train", (), "optim.weight_decay", -0.0001, "optim.weight_decay=-0.0001: expected a number ≥ 0"),
    ("train", (), "optim.betas", [0.9, 1.0], "optim.betas=[0.9, 1.0]: expected a list of numbers in [0, 1)"),
    ("train", ("optim=sgd",), "optim.momentum", 1.0, "optim.momentum=1.0: expected a number in [0, 1)"),
    ("train", ("optim=nesterov",), "optim.momentum", 0.0, "optim.momentum=0.0: expected a number in (0, 1)"),
    ("train", ("optim=rmsprop",), "optim.alpha", 1.0, "optim.alpha=1.0: expected a number in [0, 1)"),
    ("train", ("optim=lbfgs",), "optim.batch", 0, "optim.batch=0: expected full or a whole number ≥ 1"),
    # sched
    ("train", (), "sched.min_factor", 1.5, "sched.min_factor=1.5: expected a number in [0, 1]"),
    ("train", (), "sched.warmup_epochs", -1, "sched.warmup_epochs=-1: expected a number ≥ 0"),
    ("train", (), "sched.every", "batch", "sched.every=batch: expected step or epoch"),
    ("train", ("sched=step",), "sched.gamma", 0, "sched.gamma=0: expected a number in (0, 1]"),
    ("train", ("sched=step",), "sched.step_size", 0, "sched.step_size=0: expected a whole number ≥ 1"),
    ("train", ("sched=plateau",), "sched.factor", 1.0, "sched.factor=1.0: expected a number in (0, 1)"),
    (
        "train",
        ("sched=multistep",),
        "sched.milestones",
        [30, 0],
        "sched.milestones=[30, 0]: expected a list of whole numbers ≥ 1",
    ),
    ("train", ("sched=cyclic_cosine",), "sched.cycles", 0, "sched.cycles=0: expected a whole number ≥ 1"),
    # train's own keys and the shared run keys
    ("train", (), "regularizer.l2", -1.0, "regularizer.l2=-1.0: expected a number ≥ 0"),
    ("train", (), "ema.decay", 1.0, "ema.decay=1.0: expected a number in (0, 1) or polyak or null"),
    ("train", (), "loss.label_smoothing", 1.0, "loss.label_smoothing=1.0: expected a number in [0, 1)"),
    ("train", (), "ensemble.size", 0, "ensemble.size=0: expected a whole number ≥ 1"),
    ("train", (), "init_from_weights", "first", "init_from_weights=first: expected last or best"),
    ("train", (), "backbone_lr_scale", -0.1, "backbone_lr_scale=-0.1: expected a number ≥ 0"),
    ("train", (), "seed", -1, "seed=-1: expected a whole number ≥ 0"),
    ("detect", (), "seed", 1.5, "seed=1.5: expected a whole number ≥ 0"),
    ("train", (), "threads", 0, "threads=0: expected a whole number ≥ 1 or null"),
    ("dqn", (), "threads", -2, "threads=-2: expected a whole number ≥ 1 or null"),
    ("train", (), "resume", 3, "resume=3: expected true or false or a string"),
    ("fuse-bn", (), "device", "tpu", "device=tpu: expected one of auto, cpu, cuda, cuda:N, mps"),
    ("train", ("logger=mlflow",), "logger.tracking_uri", 3, "logger.tracking_uri=3: expected a string or null"),
    # detect
    ("detect", (), "loss.box", "iou", "loss.box=iou: expected giou or ciou"),
    ("detect", (), "loss.center_radius", 0, "loss.center_radius=0: expected a number > 0"),
    ("detect", (), "postprocess.nms_iou", 0, "postprocess.nms_iou=0: expected a number in (0, 1]"),
    ("detect", (), "postprocess.score_threshold", 1.0, "postprocess.score_threshold=1.0: expected a number in [0, 1)"),
    ("detect", (), "postprocess.top_k", 0, "postprocess.top_k=0: expected a whole number ≥ 1"),
    ("detect", (), "postprocess.soft_method", "hard", "postprocess.soft_method=hard: expected gaussian or linear"),
    ("detect", (), "mode", "eval", "mode=eval: expected train or predict"),
    ("detect", (), "method", "wbf", "method=wbf: expected nms or softnms"),
    # dqn: agent, environment, evaluation
    ("dqn", (), "agent.gamma", 1.5, "agent.gamma=1.5: expected a number in [0, 1]"),
    ("dqn", (), "agent.aggregation", "sum", "agent.aggregation=sum: expected mean or max"),
    ("dqn", (), "agent.loss", "l1", "agent.loss=l1: expected mse or huber"),
    ("dqn", (), "agent.tau", 0, "agent.tau=0: expected a number in (0, 1]"),
    ("dqn", (), "agent.end_epsilon", -0.1, "agent.end_epsilon=-0.1: expected a number in [0, 1]"),
    ("dqn", (), "agent.batch_size", 0, "agent.batch_size=0: expected a whole number ≥ 1"),
    ("dqn", (), "agent.hidden", [0], "agent.hidden=[0]: expected a list of whole numbers ≥ 1"),
    ("dqn", (), "eval.epsilon", 1.5, "eval.epsilon=1.5: expected a number in [0, 1]"),
    ("dqn", ("env=atari",), "eval.every", 0, "eval.every=0: expected a whole number ≥ 1"),
    ("dqn", (), "env.num_envs", 0, "env.num_envs=0: expected a whole number ≥ 1"),
    ("dqn", ("env=atari",), "env.frame_skip", 0, "env.frame_skip=0: expected a whole number ≥ 1"),
    ("pg", (), "env.frame_stack", 0, "env.frame_stack=0: expected a whole number ≥ 1"),
    ("pg", (), "eval.every", 0, "eval.every=0: expected a whole number ≥ 1"),
    ("dqn", (), "total_steps", 0, "total_steps=0: expected a whole number ≥ 1"),
    ("dqn", (), "mode", "test", "mode=test: expected train or eval"),
    # search-rl: controllers and spaces
    ("search-rl", (), "controller.baseline_decay", 1.0, "controller.baseline_decay=1.0: expected a number in [0, 1)"),
    ("search-rl", (), "controller.reward_power", 0, "controller.reward_power=0: expected a number > 0"),
    ("search-rl", (), "controller.depth_schedule", 5, "controller.depth_schedule=5: expected a mapping or null"),
    ("search-rl", ("controller=metaqnn",), "controller.alpha", 0, "controller.alpha=0: expected a number in (0, 1]"),
    (
        "search-rl",
        ("controller=metaqnn",),
        "controller.schedule_models",
        0,
        "controller.schedule_models=0: expected a whole number ≥ 1 or null",
    ),
    (
        "search-rl",
        ("controller=evolution",),
        "controller.population",
        1,
        "controller.population=1: expected a whole number ≥ 2",
    ),
    ("search-rl", (), "space.skip_p", 1.5, "space.skip_p=1.5: expected a number in [0, 1]"),
    ("search-rl", (), "space.filters", [24, 0], "space.filters=[24, 0]: expected a list of whole numbers ≥ 1"),
    (
        "search-rl",
        ("controller=metaqnn",),
        "space.kernel_limit",
        "exact",
        "space.kernel_limit=exact: expected bin or side",
    ),
    (
        "search-rl",
        ("controller=metaqnn",),
        "space.size_bins",
        [8, 1],
        "space.size_bins=[8, 1]: expected a list of whole numbers ≥ 2",
    ),
    # search-darts: supernets
    (
        "search-darts",
        (),
        "supernet.primitives",
        ["conv_7x7"],
        "supernet.primitives=[conv_7x7]: expected a list drawn from none, max_pool_3x3, avg_pool_3x3, skip_connect, "
        "sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5",
    ),
    ("search-darts", (), "supernet.partial_channels", 0, "supernet.partial_channels=0: expected a whole number ≥ 1"),
    ("search-darts", ("supernet=chain",), "supernet.slots", 0, "supernet.slots=0: expected a whole number ≥ 1"),
    # fuse-bn, prep-imagenet
    ("fuse-bn", (), "export", "tflite", "export=tflite: expected onnx or torchscript or null"),
    ("fuse-bn", (), "source_weights", "final", "source_weights=final: expected last or best"),
    ("fuse-bn", (), "input_shape", [3, 0, 224], "input_shape=[3, 0, 224]: expected a list of whole numbers ≥ 1"),
    ("fuse-bn", (), "repeats", 0, "repeats=0: expected a whole number ≥ 1"),
    ("prep-imagenet", (), "splits", ["test"], "splits=[test]: expected a list drawn from train, val"),
    ("prep-imagenet", (), "labels", "guess", "labels=guess: expected one of auto, devkit, shipped"),
    ("prep-imagenet", (), "workers", -1, "workers=-1: expected a whole number ≥ 0"),
    ("prep-imagenet", (), "per_class", 0, "per_class=0: expected a whole number ≥ 1 or null"),
]


def with_value(plain: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(plain)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    assert last in node, f"{dotted} is not a key of this config"
    node[last] = value
    return out


@pytest.mark.parametrize("command, choices, key, value, line", BAD, ids=[f"{c}:{k}={v}" for c, _, k, v, _ in BAD])
def test_a_bad_value_is_one_line_naming_its_key(command, choices, key, value, line):
    plain, rules, _ = composed(command, choices)
    found = schema.violations(with_value(plain, key, value), rules)
    assert [v.key for v in found] == [key]
    assert found[0].line() == line


GOOD = [  # values at the edge of a rule, which it takes
    ("train", ("data=cifar10",), "data.val_size", 0),  # train on all, validate on the test images
    ("train", ("data=cifar10",), "data.val_size", 0.1),
    ("train", (), "data.val_size", 500),
    ("train", (), "data.on_device", True),
    ("train", (), "data.augment.resized_crop_scale", [0.08, 1.0]),
    ("train", (), "ema.decay", "polyak"),
    ("train", (), "ema.decay", 0.999),
    ("train", (), "freeze", "all_but_head"),
    ("train", (), "freeze", ["stem", "stages.0"]),
    ("train", (), "resume", "outputs/train/runs/2024-01-01_00-00-00"),
    ("train", ("optim=sgd",), "optim.momentum", 0.0),
    ("train", ("optim=lbfgs",), "optim.batch", 256),
    ("train", ("sched=cosine",), "sched.warmup_epochs", 0.5),
    ("train", ("model=darts",), "model.genotype", {"normal": [], "reduce": []}),
    ("detect", (), "model.stride", 8),
    ("detect", ("data=coco",), "data.image_size", [96, 128]),
    ("dqn", (), "device", "cuda:1"),
    ("dqn", (), "env.threshold", 195),
    ("search-rl", (), "controller.depth_schedule", None),
]


@pytest.mark.parametrize("command, choices, key, value", GOOD, ids=[f"{c}:{k}={v}" for c, _, k, v in GOOD])
def test_a_value_at_the_edge_of_its_rule_passes(command, choices, key, value):
    plain, rules, _ = composed(command, choices)
    assert schema.violations(with_value(plain, key, value), rules) == []


def test_command_line_overrides_are_checked_as_composed():
    """The values Hydra parses from a command line (numbers, lists, null) meet the same rules."""
    assert lines("train", ("trainer.epochs=1.5", "optim.lr=-1", "data.augment.resized_crop_scale=[0.5,1.0]")) == [
        "optim.lr=-1: expected a number > 0",
        "trainer.epochs=1.5: expected a whole number ≥ 1",
    ]
    assert (
        lines("train", ("trainer.grad_clip=null", "model=mlp", "model.depth=0", "data=cifar10", "data.val_size=0"))
        == []
    )
    assert lines("dqn", ("agent.aggregation=median",)) == ["agent.aggregation=median: expected mean or max"]
