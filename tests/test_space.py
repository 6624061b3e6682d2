"""Tests for tlsearch.space: YAML → SearchSpace → Strategy."""

from __future__ import annotations

import textwrap

import optuna
import pytest
import yaml

from tlsearch.space import (
    CONDITIONAL_PARAMS,
    Choice,
    Fixed,
    Range,
    SearchSpace,
    SpaceError,
    bundled_spaces,
    load_space,
)
from tlsearch.strategy import ALL_BLOCKS, Strategy

# TPESampler(group=True) is what the study uses; its "experimental" warning is noise here.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)

REGISTRY = (
    "mobilenet_v2 mobilenet_v3_small mobilenet_v3_large efficientnet_b0 efficientnet_b1 "
    "efficientnet_b2 efficientnet_b3 efficientnet_v2_b0 efficientnet_v2_b1 efficientnet_v2_b2 "
    "efficientnet_v2_b3 resnet50_v2 densenet121 convnext_tiny xception inception_v3 tiny_cnn "
    "efficientnet_lite0 efficientnet_lite1 efficientnet_lite2"
).split()

SEARCHY = """
name: searchy
backbones:
  tiny_cnn: [32, 48]
  mobilenet_v2: 96
unfreeze_blocks: [0, 1, 2, all]
gradual: [false, true]
bn_mode: [frozen, affine, adapt]
backbone_lr_ratio: {low: 0.01, high: 0.3, log: true}
finetune_epochs: {low: 1, high: 5}
head_lr: {low: 1.0e-4, high: 1.0e-2, log: true}
head_epochs: 2
head_dropout: {low: 0.0, high: 0.5, step: 0.1}
augmentation: [none, light]
"""


def _study(seed: int = 0) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=5
    )
    return optuna.create_study(direction="maximize", sampler=sampler)


def _run(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[optuna.Trial, Strategy]]:
    """Ask, sample and tell `n` trials, so TPE gets past its start-up trials."""
    study, out = _study(seed), []
    for _ in range(n):
        trial = study.ask()
        strategy = space.sample(trial, weights="none", seed=7)
        study.tell(trial, strategy.head_lr * (1 + strategy.unfreeze_blocks))
        out.append((trial, strategy))
    return out


def _write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _space(tmp_path, text: str = SEARCHY, **kwargs) -> SearchSpace:
    return load_space(_write(tmp_path, text), **kwargs)


def test_bundled_spaces_are_listed():
    assert {"quick", "default", "thorough"} <= set(bundled_spaces())


@pytest.mark.parametrize("name", ["quick", "default", "thorough"])
def test_bundled_space_samples_valid_strategies(name):
    space = load_space(name, known_backbones=REGISTRY)
    assert space.name == name and space.objective == "balanced_accuracy"
    assert "tiny_cnn" not in dict(space.backbones)
    pairs = set(space.backbone_sizes())
    for trial, strategy in _run(space, 20):
        assert isinstance(strategy, Strategy)
        assert (strategy.backbone, strategy.image_size) in pairs
        assert strategy.weights == "none" and strategy.seed == 7 + trial.number
        if strategy.unfreeze_blocks == 0:
            assert not set(CONDITIONAL_PARAMS) & set(trial.params)
            assert (strategy.bn_mode, strategy.gradual, strategy.finetune_epochs) == (
                "frozen",
                False,
                0,
            )
        for key, param in space.params.items():
            if isinstance(param, Fixed):
                assert key not in trial.params


def test_quick_space_matches_the_demo_brief():
    space = load_space("quick")
    # Real ImageNet weights offline: the EfficientNet-Lite family (not the self-pretrained
    # MobileNetV3Small, whose pretraining photos the textures demo is cut from).
    assert space.backbones == (("efficientnet_lite0", (96, 128)), ("efficientnet_lite1", (96,)))
    assert space.params["unfreeze_blocks"] == Choice((0, 1, 2))
    assert space.params["head_epochs"] == Fixed(5)
    assert space.params["finetune_epochs"] == Fixed(3)
    assert space.params["batch_size"] == Fixed(32)
    assert space.params["imbalance"] == Choice(("none", "class_weight", "oversample", "focal"))


def test_conditional_parameters_follow_unfreeze(tmp_path):
    space = _space(tmp_path)
    seen = set()
    for trial, strategy in _run(space, 40):
        unfreeze = trial.params["unfreeze_blocks"]
        assert strategy.unfreeze_blocks == unfreeze
        seen.add(unfreeze)
        if unfreeze == 0:
            assert not set(CONDITIONAL_PARAMS) & set(trial.params)
            assert strategy.backbone_lr == pytest.approx(strategy.head_lr * 0.1)
        else:
            assert {"bn_mode", "backbone_lr_ratio", "finetune_epochs"} <= set(trial.params)
            assert ("gradual" in trial.params) == (unfreeze != 1)
            ratio = trial.params["backbone_lr_ratio"]
            assert strategy.backbone_lr == pytest.approx(strategy.head_lr * ratio)
            assert strategy.fine_tunes
    assert {0, ALL_BLOCKS} <= seen


def test_backbone_is_one_categorical_and_fixed_params_are_not_suggested(tmp_path):
    space = _space(tmp_path)
    dists = space.distributions()
    assert dists["backbone"] == optuna.distributions.CategoricalDistribution(
        ("tiny_cnn@32", "tiny_cnn@48", "mobilenet_v2@96")
    )
    assert dists["unfreeze_blocks"].choices == (0, 1, 2, ALL_BLOCKS)
    assert isinstance(dists["head_lr"], optuna.distributions.FloatDistribution)
    assert dists["head_lr"].log
    assert isinstance(dists["finetune_epochs"], optuna.distributions.IntDistribution)
    assert "head_epochs" not in dists and "batch_size" not in dists
    trial, strategy = _run(space, 1)[0]
    assert "head_epochs" not in trial.params and strategy.head_epochs == 2
    assert set(trial.params) <= set(dists)


def test_same_sampler_seed_gives_same_strategies(tmp_path):
    space = _space(tmp_path)
    first = [s for _, s in _run(space, 15, seed=3)]
    again = [s for _, s in _run(space, 15, seed=3)]
    other = [s for _, s in _run(space, 15, seed=4)]
    assert first == again
    assert first != other
    assert len({s.seed for s in first}) == len(first)


def test_overrides(tmp_path):
    space = load_space(
        _write(tmp_path, SEARCHY),
        overrides=[
            "head_epochs=5",
            "augmentation=[none, light, medium]",
            "head_lr={low: 1e-4, high: 1e-3, log: true}",
            "backbone_lr_ratio.high=0.5",
            "backbones.efficientnet_b0=[64, 96]",
            "backbones.mobilenet_v2=null",
            "gradual=null",
        ],
    )
    assert space.params["head_epochs"] == Fixed(5)
    assert space.params["augmentation"] == Choice(("none", "light", "medium"))
    assert space.params["head_lr"] == Range(1e-4, 1e-3, log=True)
    assert space.params["backbone_lr_ratio"] == Range(0.01, 0.5, log=True)
    assert space.params["gradual"] == Fixed(False)
    assert dict(space.backbones) == {"tiny_cnn": (32, 48), "efficientnet_b0": (64, 96)}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("head_epochs", "head_epochs"),
        ("=5", "=5"),
        ("head_epochs=", "head_epochs"),
        ("head_epochs=0", "head_epochs"),
        ("head_epoch=3", "head_epoch"),
        ("bn_mode=[frozn]", "bn_mode"),
        ("head_epochs=[1, 2", "head_epochs"),
        ("head_epochs.low=1", "head_epochs"),
        ("backbones.mobilenet_v2=[16]", "backbones.mobilenet_v2"),
        ("head_lr.hihg=1.0", "head_lr"),
    ],
)
def test_bad_override_is_one_line_naming_it(tmp_path, override, key):
    with pytest.raises(SpaceError) as info:
        load_space(_write(tmp_path, SEARCHY), overrides=["head_dropout=0.1", override])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--set {override}: ")
    assert key in message


B = "name: bad\nbackbones:\n  tiny_cnn: [32]\n"  # a valid start for the snippets below

BAD_SPACES = [
    ("bakcbones:\n  tiny_cnn: [32]\n", "unknown key 'bakcbones' (did you mean 'backbones'?)"),
    ("head_lr: 0.1\n", "backbones: missing"),
    ("backbones: [tiny_cnn]\n", "backbones: must map"),
    ("backbones:\n  tiny_cnn: [16]\n", "backbones.tiny_cnn[0]: image size must be >= 32"),
    ("backbones:\n  tiny_cnn: []\n", "backbones.tiny_cnn: empty list"),
    ("backbones:\n  tiny_cnn:\n", "backbones.tiny_cnn: no image size"),
    ("backbones:\n  tiny_cnn: [32, 32]\n", "backbones.tiny_cnn: duplicate image sizes"),
    (B + "head_epochs: three\n", "head_epochs: must be an integer"),
    (B + "head_epochs: 2.5\n", "head_epochs: must be an integer"),
    (B + "head_dropout: {low: 0.5, high: 0.1}\n", "head_dropout: low (0.5) must be <= high"),
    (B + "head_dropout: {low: 0.0, high: 1.0}\n", "head_dropout.high: must be < 1"),
    (B + "head_lr: {low: 0.0, high: 0.1, log: true}\n", "head_lr.low: must be > 0"),
    (B + "weight_decay: {low: 0.0, high: 0.1, log: true}\n", "weight_decay.low: must be > 0"),
    (B + "head_lr: {low: 1.0e-4, hihg: 0.1}\n", "head_lr: unknown key 'hihg' (did you mean"),
    (B + "head_lr: {low: 1.0e-4}\n", "head_lr: a range needs both 'low' and 'high'"),
    (B + "head_lr: {low: 1.0e-4, high: 0.1, log: maybe}\n", "head_lr.log: must be true or"),
    (B + "head_lr: {low: 1.0e-4, high: 0.1, log: true, step: 1.0e-4}\n", "head_lr: step cannot"),
    (B + "head_dropout: {low: 0.0, high: 0.5, step: 0.2}\n", "head_dropout: high - low"),
    (B + "head_epochs: {low: 1, high: 5, step: 0.5}\n", "head_epochs.step: must be an integer"),
    (B + "bn_mode: [frozen, frozn]\n", "bn_mode[1]: must be one of frozen, affine, adapt"),
    (B + "bn_mode: [frozen, off]\n", "bn_mode[1]: must be one of"),
    (B + "bn_mode: {low: 1, high: 2}\n", "bn_mode: a {low, high} range needs a numeric"),
    (B + "augmentation: []\n", "augmentation: empty list"),
    (B + "augmentation: [none, none]\n", "augmentation: duplicate choices"),
    (B + "imbalance: smote\n", "imbalance: must be one of none, class_weight"),
    (B + "schedule: [cosine, linear]\n", "schedule[1]: must be one of constant, cosine"),
    (B + "optimizer: rmsprop\n", "optimizer: must be one of adam, adamw, sgd"),
    (B + "gradual: [false, maybe]\n", "gradual[1]: must be true or false"),
    (B + "unfreeze_blocks: [0, -2]\n", "unfreeze_blocks[1]: must be >= 0 or 'all'"),
    (B + "unfreeze_blocks: {low: 0, high: all}\n", "unfreeze_blocks.high: 'all' cannot bound"),
    (B + "objective: top_k_accuracy\n", "objective: must be one of balanced_accuracy"),
    (B + "name: [a, b]\n", "name: must be a string"),
    (B + "finetune_epochs: 0\n", "finetune_epochs: must be >= 1"),
    (B + "head_lr:\n", "head_lr: no value"),
    (B + "head_lr: [0.1, 0.2\nhead_epochs: 3\n", "line 5: invalid YAML"),
    (B + "\thead_lr: 0.1\n", "line 4: invalid YAML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SPACES)
def test_invalid_space_is_one_line_naming_the_key(tmp_path, text, expected):
    path = _write(tmp_path, text, "bad.yaml")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


@pytest.mark.parametrize(("text", "expected"), [("", "empty"), ("- a\n- b\n", "a list")])
def test_empty_or_non_mapping_file(tmp_path, text, expected):
    with pytest.raises(SpaceError, match=expected):
        load_space(_write(tmp_path, text))


def test_unknown_backbone_only_with_known_backbones(tmp_path):
    text = "backbones:\n  mobilenetv2: [96]\n"
    assert load_space(_write(tmp_path, text)).backbone_sizes() == [("mobilenetv2", 96)]
    with pytest.raises(SpaceError) as info:
        load_space(_write(tmp_path, text), known_backbones=REGISTRY)
    message = str(info.value)
    assert "backbones.mobilenetv2: unknown backbone (did you mean 'mobilenet_v2'?)" in message


def test_unknown_bundled_name_lists_bundled_spaces(tmp_path):
    with pytest.raises(SpaceError, match="unknown search space 'quik'.*did you mean 'quick'"):
        load_space("quik")
    with pytest.raises(SpaceError) as info:
        load_space("nothing")
    assert "default, quick, thorough" in str(info.value)
    with pytest.raises(SpaceError, match="no such search-space file"):
        load_space(tmp_path / "missing.yaml")


def test_restrict_backbones(tmp_path):
    space = _space(tmp_path)
    by_name = space.restrict_backbones(["mobilenet_v2", "tiny_cnn@48"])
    assert by_name.backbones == (("tiny_cnn", (48,)), ("mobilenet_v2", (96,)))
    assert by_name.fingerprint() != space.fingerprint()
    single = space.restrict_backbones("mobilenet_v2")
    assert single.backbone_sizes() == [("mobilenet_v2", 96)]
    trial, strategy = _run(single, 1)[0]
    assert "backbone" not in trial.params and strategy.backbone == "mobilenet_v2"
    for names in (["resnet50_v2"], ["tiny_cnn@96"], []):
        with pytest.raises(SpaceError, match="backbones: "):
            space.restrict_backbones(names)


def test_fingerprint_is_stable_and_tracks_edits(tmp_path):
    path = _write(tmp_path, SEARCHY)
    space = load_space(path)
    assert load_space(path).fingerprint() == space.fingerprint()
    assert load_space(path) == space and hash(load_space(path)) == hash(space)
    # The normalised dict reads back as the same space.
    again = SearchSpace.from_dict(yaml.safe_load(yaml.safe_dump(space.to_dict(), sort_keys=False)))
    assert again.fingerprint() == space.fingerprint() and again == space
    # Spelling differences that sample the same thing do not matter; edits do.
    respelled = load_space(path, overrides=["head_epochs=[2]", "description=another"])
    assert respelled.fingerprint() == space.fingerprint()
    assert load_space(path, overrides=["head_epochs=3"]).fingerprint() != space.fingerprint()
    edited = _write(tmp_path, SEARCHY.replace("high: 0.3", "high: 0.2"), "edited.yaml")
    assert load_space(edited).fingerprint() != space.fingerprint()


def test_fixed_strategy_and_enqueued_trial_agree(tmp_path):
    space = _space(tmp_path)
    baseline = dict(backbone="mobilenet_v2", unfreeze_blocks="all", bn_mode="affine", head_lr=1e-3)
    strategy = space.fixed_strategy(**baseline)
    assert (strategy.backbone, strategy.image_size) == ("mobilenet_v2", 96)
    assert strategy.unfreeze_blocks == ALL_BLOCKS and strategy.bn_mode == "affine"
    assert strategy.finetune_epochs == 3  # midpoint of the 1..5 range
    assert strategy.head_dropout == pytest.approx(0.2)  # midpoint 0.25 snapped to step 0.1
    assert strategy.gradual is False  # first choice

    study = _study()
    study.enqueue_trial(space.trial_params(**baseline))
    trial = study.ask()
    assert space.sample(trial, seed=0) == strategy.replace(seed=trial.number)

    head_only = space.fixed_strategy(backbone="tiny_cnn@48", bn_mode="frozen")
    assert head_only.image_size == 48 and not head_only.fine_tunes
    assert set(space.trial_params(unfreeze_blocks=0)) == {
        "backbone",
        "unfreeze_blocks",
        "head_lr",
        "head_dropout",
        "augmentation",
    }


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"head_lr": 1.0}, "head_lr: 1.0 is outside the space"),
        ({"head_epochs": 3}, "head_epochs: 3 is outside the space (fixed at 2)"),
        ({"bn_mode": "adapt"}, "bn_mode: not used when unfreeze_blocks is 0"),
        ({"backbone": "resnet50_v2"}, "backbone: 'resnet50_v2' is not in space"),
        ({"backbone": "tiny_cnn", "image_size": 64}, "image_size: 64 is not a size of tiny_cnn"),
        ({"head_lrr": 1e-3}, "head_lrr: unknown parameter (did you mean 'head_lr'?)"),
        ({"augmentation": "strong"}, "augmentation: 'strong' is outside the space"),
    ],
)
def test_fixed_strategy_rejects_values_outside_the_space(tmp_path, values, expected):
    with pytest.raises(SpaceError) as info:
        _space(tmp_path).fixed_strategy(**values)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_fixed_trial_and_space_are_frozen(tmp_path):
    space = _space(tmp_path)
    with pytest.raises(TypeError):
        space.params["head_lr"] = Fixed(0.1)  # type: ignore[index]
    trial = optuna.trial.FixedTrial(
        {
            "backbone": "tiny_cnn@32",
            "unfreeze_blocks": 0,
            "head_lr": 1e-3,
            "head_dropout": 0.3,
            "augmentation": "none",
        }
    )
    assert space.sample(trial).head_dropout == pytest.approx(0.3)


def test_a_key_added_later_leaves_older_fingerprints_alone():
    """`epoch_soup` came after studies existed: at its default the fingerprint is the one
    those studies saved (pinned: default.yaml's before the key), so they still resume."""
    from tlsearch.space import load_space

    assert load_space("default").fingerprint() == "3f254c441a2bdb55"
    assert load_space("default", overrides=["epoch_soup=0"]).fingerprint() == "3f254c441a2bdb55"
    assert load_space("default", overrides=["epoch_soup=3"]).fingerprint() != "3f254c441a2bdb55"
