import pytest

from training.cli import generated_readme_sections
from zoo.base import SSLZooError
from zoo.cards import card_path, render_card, update_readme, write_cards, zoo_rows
from zoo.registry import REGISTRY


def test_cards_are_up_to_date():
    assert write_cards(check=True) == [], "model cards are stale: run `sslzoo cards` and commit model_cards/"


def test_readme_tables_are_generated_and_up_to_date():
    sections = generated_readme_sections()
    assert update_readme(sections, check=True) == [], "README tables are stale: run `sslzoo cards`"
    assert {r["name"].split(" ")[0] for r in zoo_rows()} == set(REGISTRY)


def test_a_stale_readme_table_is_found_and_rewritten(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- zoo-table:start -->\n| hand-typed |\n<!-- zoo-table:end -->\nrest\n")
    sections = {"zoo-table": generated_readme_sections()["zoo-table"]}
    assert update_readme(sections, check=True, readme=readme) == ["zoo-table"]
    assert "hand-typed" in readme.read_text()  # --check writes nothing
    assert update_readme(sections, readme=readme) == ["zoo-table"]
    text = readme.read_text()
    assert "hand-typed" not in text and text.startswith("intro\n") and text.endswith("<!-- zoo-table:end -->\nrest\n")
    assert update_readme(sections, check=True, readme=readme) == []
    with pytest.raises(SSLZooError, match="no generated section 'method-table'"):
        update_readme({"method-table": "x"}, readme=readme)


def test_card_content_follows_the_record():
    for name, rec in REGISTRY.items():
        text = render_card(rec)
        assert text.startswith("---\nlibrary_name: ssl-zoo\npipeline_tag: image-feature-extraction\n")
        assert rec.preprocess.describe() in text and f"| feature dim | {rec.feature_dim} |" in text
        for m in rec.metrics:
            assert f"{m.value:.2f}" in text and m.source in text
        assert card_path(name).read_text() == text


def _meta(text):
    import yaml

    return yaml.safe_load(text.split("---\n")[1])


def test_every_card_is_read_by_huggingface_hub_without_metadata_errors(tmp_path):
    """The card is a mirror's README.md: huggingface_hub must parse it strictly (ModelCard.load with
    ignore_metadata_errors=False; the model-index parser the Hub's ModelInfo uses), with the source URL, Hub
    dataset ids, a top-level ``datasets:`` and short task / metric names."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from zoo.cards import HUB_DATASETS

    hub_ids = {v[0] for v in HUB_DATASETS.values()}
    for name, rec in REGISTRY.items():
        path = tmp_path / f"{name}.md"
        path.write_text(render_card(rec))
        card = ModelCard.load(path, ignore_metadata_errors=False)
        assert card.data.library_name == "ssl-zoo" and card.data.pipeline_tag == "image-feature-extraction"
        assert card.data.datasets and set(card.data.datasets) <= hub_ids, (name, card.data.datasets)
        model_name, results = model_index_to_eval_results(_meta(render_card(rec))["model-index"])
        assert model_name == name and len(results) == len(rec.metrics) == len(card.data.eval_results)
        for res, m in zip(results, rec.metrics):
            assert res.dataset_type == HUB_DATASETS[m.dataset][0] and res.dataset_split == m.split
            assert res.metric_value == round(m.value, 2) and res.metric_config == m.protocol  # protocol kept whole
            assert res.task_name in ("linear probe", "few-shot linear probe", "kNN", "fine-tuning")
            assert res.metric_name.startswith(("top-1 accuracy", "top-5 accuracy")) and len(res.metric_name) < 40
            assert res.source_name == m.source and res.source_url.startswith("https://github.com/")
            if m.is_claim:  # the upstream repository the claim names
                assert res.source_url.removeprefix("https://github.com/") in m.source


def test_card_names_are_derived_not_copied():
    from zoo.cards import hub_dataset, metric_name, metric_source, task_name

    assert hub_dataset("ImageNet-1k train (1.28M images, labels unused)") == ("ILSVRC/imagenet-1k", "ImageNet-1k")
    assert hub_dataset("Fashion-MNIST train")[0] == "zalando-datasets/fashion_mnist"
    assert hub_dataset("mnist")[0] == "ylecun/mnist" and hub_dataset("STL10 unlabeled")[0] == "tanganke/stl10"
    with pytest.raises(SSLZooError, match="HUB_DATASETS"):
        hub_dataset("places365")
    assert task_name("knn k=20 T=0.07") == "kNN" and metric_name("knn k=20 T=0.07") == "top-1 accuracy, k=20 T=0.07"
    assert metric_name("few-shot k=10 (mean of seeds 0,1,2)") == "top-1 accuracy, 10-shot"
    assert metric_name("linear probe on frozen features; top-5") == "top-5 accuracy"
    with pytest.raises(SSLZooError, match="task_name"):
        task_name("semantic segmentation, mIoU")
    assert metric_source("upstream claim: chingyaoc/DCL README")["url"] == "https://github.com/chingyaoc/DCL"
    with pytest.raises(SSLZooError, match="OWNER/REPO"):
        metric_source("upstream claim: the paper")
