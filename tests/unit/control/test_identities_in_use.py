"""IdentitiesInUse (cluster/identities_in_use.py): what a watch of endpoint records asks of
it, whether an identity came or went with one record's change."""

from driver.control.cluster.identities_in_use import IdentitiesInUse

WEB, DB = 300, 301


def test_an_identity_comes_with_its_first_record_and_goes_with_its_last():
    use = IdentitiesInUse()
    assert use.replace(None, WEB), "the first record of WEB"
    assert not use.replace(None, WEB), "a second one"
    assert not use.replace(WEB, None), "one of two went"
    assert WEB in use
    assert use.replace(WEB, None), "the last one went"
    assert WEB not in use and list(use) == []


def test_a_record_written_again_changes_nothing():
    use = IdentitiesInUse([WEB])
    assert not use.replace(WEB, WEB)
    assert list(use) == [WEB]


def test_a_record_that_changes_identity_moves_one_use():
    use = IdentitiesInUse([WEB, WEB])
    assert use.replace(WEB, DB), "DB came, WEB keeps a record"
    assert sorted(use) == [WEB, DB]
    assert use.replace(WEB, DB), "WEB went"
    assert list(use) == [DB]
    assert not use.replace(DB, DB)


def test_it_starts_from_a_listing_with_each_record_counted():
    use = IdentitiesInUse([WEB, DB, WEB])
    assert not use.replace(WEB, None), "WEB had two records"
    assert use.replace(WEB, None)
    assert use.replace(DB, None)
    assert list(use) == []
