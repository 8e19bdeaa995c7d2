import csv
import zipfile

from nightrec.data import movielens


def fake_wheel(path):
    """A zip with the same members and typed headers as recbole's ml-100k files."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(movielens.MEMBER.format("inter"), "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                       "1\t10\t4\t881250949\n2\t10\t5\t881250950\n1\t11\t3\t891717742\n")
        wheel.writestr(movielens.MEMBER.format("item"), "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                       "class:token_seq\n10\tToy Story\t1995\tAnimation Children's Comedy\n11\tHeat\t1995\tAction\n")
        wheel.writestr(movielens.MEMBER.format("user"), "user_id:token\tage:token\tgender:token\toccupation:token\t"
                       "zip_code:token\n1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n")
    return path


def test_convert_writes_one_landing_folder_per_utc_day(tmp_path):
    counts = movielens.convert(fake_wheel(tmp_path / "w.whl"), tmp_path / "landing")
    assert counts == {"interactions": 3, "days": 2, "items": 2, "users": 2,
                      "first_day": "1997-12-04", "last_day": "1998-04-04"}
    with open(tmp_path / "landing/interactions/dt=1997-12-04/ratings.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"user_id": "1", "item_id": "10", "event_type": "rating", "value": "4", "ts": "1997-12-04T15:55:49Z"},
        {"user_id": "2", "item_id": "10", "event_type": "rating", "value": "5", "ts": "1997-12-04T15:55:50Z"},
    ]
    with open(tmp_path / "landing/items.csv") as handle:
        assert list(csv.reader(handle))[1] == ["10", "Toy Story", "Animation|Children's|Comedy", "1995"]
    with open(tmp_path / "landing/users.csv") as handle:
        assert list(csv.reader(handle))[2] == ["2", "53", "F", "other"]
