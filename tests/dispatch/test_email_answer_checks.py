"""The pure rule for emailed agency answers: every reason a reply may not change a case."""
from __future__ import annotations

from dispatch.answers import Evidence, email_answer_checks

ADDR = frozenset({"dieuhanh@sawaco.com.vn"})


def ev(**kw: object) -> Evidence:
    base = dict(claimed_case="CASE-1", proven=frozenset({("CASE-1", "sawaco")}), case_id="CASE-1", holder="sawaco",
                sender="dieuhanh@sawaco.com.vn", sender_auth="pass", kind="resolved")
    base.update(kw)
    return Evidence(**base)  # type: ignore[arg-type]


def test_all_proofs_present() -> None:
    assert email_answer_checks(ev(), ADDR, True) == []
    assert email_answer_checks(ev(claimed_case=None), ADDR, True) == []


def test_each_missing_proof_is_named() -> None:
    assert email_answer_checks(ev(proven=frozenset()), ADDR, True) == ["no_reply_token"]
    assert email_answer_checks(ev(claimed_case="CASE-2"), ADDR, True) == ["token_of_another_case"]
    two = frozenset({("CASE-1", "sawaco"), ("CASE-2", "sawaco")})
    assert email_answer_checks(ev(proven=two), ADDR, True) == ["tokens_of_several_cases"]
    # After a re-route the previous holder's token proves nothing about the new holder's case.
    assert email_answer_checks(ev(holder="thoat-nuoc"), frozenset({"dieuhanh@sawaco.com.vn"}), True)[0] \
        == "token_of_another_agency"
    assert email_answer_checks(ev(sender=None), ADDR, True) == ["no_single_from_address"]
    assert email_answer_checks(ev(sender="x@evil.example"), ADDR, True) == ["sender_not_agency_address"]
    assert email_answer_checks(ev(sender_auth="fail"), ADDR, False) == ["sender_authentication_failed"]
    assert email_answer_checks(ev(sender_auth="none"), ADDR, True) == ["sender_not_authenticated"]
    assert email_answer_checks(ev(sender_auth="none"), ADDR, False) == []  # where it cannot be known
    assert email_answer_checks(ev(kind=None), ADDR, True) == ["no_answer_keyword"]


def test_public_references_are_not_guessable() -> None:
    import re
    import secrets

    from dispatch.cases import public_ref
    tokens = [secrets.token_urlsafe(16) for _ in range(2000)]
    refs = [public_ref(t) for t in tokens]
    assert all(re.fullmatch(r"PA-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", r) for r in refs)
    assert len(set(refs)) == len(refs)  # 40 bits: no collision among 2,000 cases
    assert public_ref(tokens[0]) == refs[0]  # stable: the reporter quotes the same one every time
    # Nothing of the sequence shows: neighbouring cases share no prefix more than chance allows.
    same_prefix = sum(a[3] == b[3] for a, b in zip(refs, refs[1:]))
    assert same_prefix < 200  # about 1/32 of 1,999 pairs by chance
