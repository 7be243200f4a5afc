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
