import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptrec_prompts.programs.parsing import normalize, parse_choice, parse_selection, ranking_from_scores

IDS = [10, 20, 30, 40]
TITLES = ["Alien (1979)", "Aliens (1986)", "12 Monkeys (1995)", "Chasing Amy (1997) [item 246]"]


@pytest.mark.parametrize(("answer", "ranking"), [
    ("2", [20]),
    ("2. Aliens (1986)", [20]),
    ("2) aliens (1986)", [20]),
    ("Aliens (1986)", [20]),
    ("  'Alien (1979).' ", [10]),
    ("12 Monkeys (1995)", [30]),  # a title that starts with digits is matched as a title first
    ("3. 12 Monkeys (1995)", [30]),
    ("#4", [40]),
    ("Chasing Amy (1997) [item 246]", [40]),
    ("1\nbecause it is similar", [10]),  # only the first line counts
])
def test_valid_answers(answer, ranking):
    result = parse_choice(answer, IDS, TITLES)
    assert result.valid and result.ranking == ranking and result.reason == ""


@pytest.mark.parametrize(("answer", "reason"), [
    ("Alien", "neither a candidate number nor a candidate title"),  # never a substring of "Alien (1979)"
    ("Aliens", "neither"),
    ("5", "outside 1..4"),
    ("0. Alien (1979)", "outside 1..4"),
    ("1. Aliens (1986)", "number 1 is 'Alien (1979)'"),  # number and title disagree
    ("", "empty answer"),
    (None, "empty answer"),
    ("Chasing Amy (1997)", "neither"),  # the disambiguated title must be written in full
])
def test_invalid_answers(answer, reason):
    result = parse_choice(answer, IDS, TITLES)
    assert not result.valid and result.ranking == [] and reason in result.reason


def test_alien_never_matches_aliens():
    assert parse_choice("Alien", [1, 2], ["Alien", "Aliens"]).ranking == [1]
    assert parse_choice("Aliens", [1, 2], ["Alien", "Aliens"]).ranking == [2]
    assert not parse_choice("Alien", [2], ["Aliens"]).valid


def test_duplicate_titles_are_ambiguous():
    result = parse_choice("Home", [1, 2], ["Home", "home"])
    assert not result.valid and "matches 2 candidates" in result.reason


def test_ranking_from_scores_is_a_full_ranking():
    assert ranking_from_scores([-3.0, -1.0, -2.0, -1.0], IDS).ranking == [20, 40, 30, 10]


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=30))
def test_ranking_is_a_permutation(scores):
    ids = list(range(100, 100 + len(scores)))
    ranking = ranking_from_scores(scores, ids).ranking
    assert sorted(ranking) == ids
    assert scores[ranking[0] - 100] == max(scores)


@pytest.mark.parametrize(("values", "expected"), [
    ([3, 1, 2], ([2, 0], "")),
    ("[4, 4, 1]", ([3, 0], "")),
    ([1], ([0], "")),
    ([11], (None, "outside 1..10")),
    ("none of them", (None, "expected a list")),
    (["a"], (None, "not a user number")),
])
def test_parse_selection(values, expected):
    picked, reason = parse_selection(values, n_pool=10, m_select=2)
    assert picked == expected[0] and expected[1] in reason


def test_normalize_is_idempotent():
    for text in ["  The  Usual Suspects (1995). ", "“Amélie”", "A"]:
        assert normalize(normalize(text)) == normalize(text)
