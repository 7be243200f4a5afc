from zoo.cards import card_path, render_card, write_cards
from zoo.registry import REGISTRY


def test_cards_are_up_to_date():
    assert write_cards(check=True) == [], "model cards are stale: run `sslzoo cards` and commit model_cards/"


def test_card_content_follows_the_record():
    for name, rec in REGISTRY.items():
        text = render_card(rec)
        assert text.startswith("---\nlibrary_name: ssl-zoo\npipeline_tag: image-feature-extraction\n")
        assert rec.preprocess.describe() in text and f"| feature dim | {rec.feature_dim} |" in text
        for m in rec.metrics:
            assert f"{m.value:.2f}" in text and m.source in text
        assert card_path(name).read_text() == text
