"""Dispatch: cases to agencies (webhook, email), their answers, the regulation's clocks, replies to reporters."""
