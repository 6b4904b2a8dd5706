"""The tokens that make a mail a candidate answer to one of our dispatch emails, written once: the email channels
read them to hand such mail to dispatch as a job (ingest/jobs.py AgencyEmailReplyJob) instead of classifying it,
and dispatch (dispatch/answers.py) reads them again to look for proof. A token is a claim, never proof.

- `[1022 #CASE-…]` in the subject: the case the dispatch email was about (guessable);
- `<msg_…@…>` in In-Reply-To/References: the dispatch email's Message-ID (random, 96 bits);
- `msg_…` as the sub-address of a recipient (`box+msg_…@domain`): the reply address the dispatch email set.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

SUBJECT_TOKEN = re.compile(r"\[1022\s*#\s*(CASE-[A-Za-z0-9-]+)\]")
MSG_ID = re.compile(r"<(msg_[0-9a-f]+)@[^>]+>")
REPLY_TOKEN = re.compile(r"msg_[0-9a-f]{24}")  # dispatch/cases.py writes "msg_" + token_hex(12)


def claims_a_dispatch(subject: str | None, references: Sequence[str], reply_tokens: Sequence[str]) -> bool:
    """Whether the mail names one of our dispatches (by any token above): dispatch then decides what it is."""
    return bool(SUBJECT_TOKEN.search(subject or "")
                or MSG_ID.search(" ".join(references))
                or any(REPLY_TOKEN.fullmatch(t.lower()) for t in reply_tokens))
