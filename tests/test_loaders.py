import numpy as np
import pytest

from adaptrec_prompts.data import load_goodreads, load_lastfm, load_movielens, make_unique_titles, normalize_movie_title
from adaptrec_prompts.data.protocol import user_sequences
from adaptrec_prompts.errors import DataError


def test_movielens_counts_match_the_published_statistics(ml100k_raw):
    inter = load_movielens(ml100k_raw)
    assert (len(inter), inter.n_users, inter.n_items) == (100_000, 943, 1682)
    assert set(inter.sources) == {"u.data", "u.item"}


def test_movielens_titles_are_latin1_decoded_and_articles_moved(ml100k_raw):
    titles = load_movielens(ml100k_raw).titles
    assert titles[12] == "The Usual Suspects (1995)"
    assert any("é" in t for t in titles.values())  # latin-1 bytes decoded, not mojibake
    assert not any("Ã" in t for t in titles.values())


def test_movielens_duplicate_titles_stay_distinguishable(ml100k_raw):
    titles = load_movielens(ml100k_raw).titles
    assert len(set(titles.values())) == len(titles) == 1682
    assert titles[246] == "Chasing Amy (1997) [item 246]" and titles[268] == "Chasing Amy (1997) [item 268]"


@pytest.mark.parametrize(("raw", "expected"), [
    ("Usual Suspects, The (1995)", "The Usual Suspects (1995)"),
    ("Perfect World, A (1993)", "A Perfect World (1993)"),
    ("Aliens (1986)", "Aliens (1986)"),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
     "The City of Lost Children (Cité des enfants perdus, La) (1995)"),
    ("Remains of the Day, The", "The Remains of the Day"),
    ("  Two   Spaces  ", "Two Spaces"),
    ("Theatre, Then (1990)", "Theatre, Then (1990)"),  # "Then" is not an article
])
def test_normalize_movie_title(raw, expected):
    assert normalize_movie_title(raw) == expected


def test_near_duplicate_titles_are_not_merged():
    assert make_unique_titles({1: "Alien", 2: "Aliens"}) == {1: "Alien", 2: "Aliens"}


def test_lastfm_sequence_rule(lastfm_raw):
    inter = load_lastfm(lastfm_raw)
    assert inter.notes["dropped_before_2002"] == 5
    assert inter.notes["dropped_artist_not_in_artists_dat"] == 1538
    # one interaction per (user, artist)
    pairs = set(zip(inter.user_ids, inter.item_ids.tolist(), strict=True))
    assert len(pairs) == len(inter)
    # user 2 tagged artist 52 first on 1 April 2009 (Europe/Madrid midnight = 22:00 UTC the day before)
    row = next(i for i, (u, a) in enumerate(pairs_list(inter)) if u == "2" and a == 52)
    assert inter.timestamps[row] == 1238536800
    seqs = user_sequences(inter)
    items, times = seqs["2"]
    # sorted by time, ties broken by artist id
    assert all((t1, i1) < (t2, i2) for (i1, t1), (i2, t2) in zip(zip(items, times), zip(items[1:], times[1:])))


def pairs_list(inter):
    return list(zip(inter.user_ids, inter.item_ids.tolist(), strict=True))


def test_lastfm_prefers_the_timestamps_file(tmp_path, lastfm_raw):
    (tmp_path / "artists.dat").write_bytes((lastfm_raw / "artists.dat").read_bytes())
    (tmp_path / "user_taggedartists-timestamps.dat").write_text(
        "userID\tartistID\ttagID\ttimestamp\n2\t52\t13\t1238536800000\n2\t51\t13\t1238536900000\n"
        "2\t52\t15\t1238536000000\n")
    inter = load_lastfm(tmp_path)
    assert inter.notes["time_source"] == "user_taggedartists-timestamps.dat"
    assert dict(zip(inter.item_ids.tolist(), inter.timestamps.tolist())) == {51: 1238536900, 52: 1238536000}


def test_goodreads_fixture(goodreads_raw):
    inter = load_goodreads(goodreads_raw)
    assert inter.n_users == 20
    assert inter.notes["dropped_not_read"] > 0 and inter.notes["dropped_no_date"] == 1
    assert inter.titles[1000] == "Alien" and inter.titles[1001] == "Aliens"
    assert inter.titles[1025] != inter.titles[1037]  # two books called "Home"
    assert np.all(inter.timestamps > 1_400_000_000)


# ---- bad input ----

def test_missing_file_names_file_and_layout(tmp_path):
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|\n")
    with pytest.raises(DataError, match=r"missing file .*u\.data.*expected the unpacked ml-100k\.zip"):
        load_movielens(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_lastfm(tmp_path / "nope")


def test_malformed_line_reports_file_line_and_text(tmp_path):
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|\n2|GoldenEye (1995)|\n", encoding="latin-1")
    (tmp_path / "u.data").write_text("1\t1\t5\t874965758\n1\t2\tfive\t874965759\n")
    with pytest.raises(DataError, match=r"u\.data:2: malformed line '1\\t2\\tfive\\t874965759'"):
        load_movielens(tmp_path)


def test_malformed_lastfm_date(tmp_path, lastfm_raw):
    (tmp_path / "artists.dat").write_bytes((lastfm_raw / "artists.dat").read_bytes())
    (tmp_path / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n2\t52\t13\t1\t4\t2009\n2\t52\t13\t31\t2\t2009\n")
    with pytest.raises(DataError, match=r"user_taggedartists\.dat:3: .*valid day/month/year"):
        load_lastfm(tmp_path)


def test_malformed_goodreads_json(tmp_path, goodreads_raw):
    for p in goodreads_raw.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    path = tmp_path / "goodreads_interactions_fixture.json"
    path.write_text(path.read_text() + "{not json\n")
    n = len(path.read_text().splitlines())
    with pytest.raises(DataError, match=rf"goodreads_interactions_fixture\.json:{n}: malformed line"):
        load_goodreads(tmp_path)


def test_ambiguous_goodreads_folder(tmp_path, goodreads_raw):
    for p in goodreads_raw.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "goodreads_interactions_other.json").write_text("")
    with pytest.raises(DataError, match="exactly one goodreads_interactions"):
        load_goodreads(tmp_path)
