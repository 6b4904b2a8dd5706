"""SMTP accept rate against a raw store-commit baseline measured in the same run.

Modes (every message is acknowledged only after its commit, as in production):
  baseline   store.submit from C concurrent tasks, no SMTP (what the store alone sustains with group commit)
  per-conn   C client processes, one SMTP connection per message (the issue's target: >= 500 msg/s)
  batched    C client processes, 100 messages per connection

Clients run in separate processes so they do not share the server's GIL. Usage:
  .venv/bin/python bench/bench_smtp.py [--messages 2000] [--clients 8]
"""
from __future__ import annotations

import argparse
import asyncio
import email.policy
import smtplib
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from channels.email_intake import EmailIntake, limits_from  # noqa: E402
from channels.email_parse import parse_email, to_inbound  # noqa: E402
from channels.smtp import SmtpService  # noqa: E402
from config.channels import SmtpOptions  # noqa: E402
from ingest.store import Store  # noqa: E402

RCPT = "phananh@1022.hochiminhcity.gov.vn"
BODY = ("Kính gửi Cổng 1022,\n\nTrước nhà số 83/16/4 đường Nguyễn Văn Linh, phường Tân Phong, quận 7 có một ổ gà "
        "rất lớn, đã nhiều ngày chưa được sửa. Buổi tối không có đèn đường nên xe máy rất dễ té ngã. "
        "Đề nghị cơ quan chức năng kiểm tra và khắc phục sớm.\n\nTrân trọng,\nNguyễn Văn A\n") * 3


def message(tag: str, i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Nguyễn Văn A <nva@example.vn>"
    msg["To"] = RCPT
    msg["Subject"] = f"Phản ánh ổ gà {i}"
    msg["Message-ID"] = f"<bench-{tag}-{i}@example.vn>"
    msg.set_content(BODY)
    return msg.as_bytes(policy=email.policy.SMTP)


def client(port: int, raws: list[bytes], per_connection: int) -> int:
    sent = 0
    for start in range(0, len(raws), per_connection):
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            for raw in raws[start:start + per_connection]:
                smtp.sendmail("nva@example.vn", [RCPT], raw)
                sent += 1
    return sent


async def baseline(store: Store, tag: str, n: int, concurrency: int) -> float:
    raws = [message(tag, i) for i in range(n)]
    items = [to_inbound(parse_email(r), channel_instance="bench", received_at="2025-03-10T08:00:00+07:00")
             for r in raws]  # parsing outside the timed part: this measures the commit path alone
    queue = list(zip(items, raws))

    async def worker() -> None:
        while queue:
            msg, raw = queue.pop()
            await store.submit(msg, raw, "message/rfc822")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0)


async def smtp_rate(port: int, pool: ProcessPoolExecutor, tag: str, n: int, clients: int, per_connection: int) -> float:
    loop = asyncio.get_running_loop()
    # Built before the clock starts: composing MIME costs the client more than the server spends on it.
    shares = [[message(tag, i) for i in range(c, n, clients)] for c in range(clients)]
    t0 = time.perf_counter()
    sent = await asyncio.gather(*(loop.run_in_executor(pool, client, port, share, per_connection)
                                  for share in shares))
    elapsed = time.perf_counter() - t0
    assert sum(sent) == n
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "bench.sqlite3", Path(tmp) / "blobs")
        options = SmtpOptions(port=0, recipients=[RCPT], max_commands=100_000)
        service = SmtpService("bench", EmailIntake(store, "bench", limits_from(options)), options)
        task = asyncio.create_task(service.run())
        await service.started.wait()
        assert service.port is not None
        with ProcessPoolExecutor(max_workers=args.clients) as pool:
            await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.1)
                                   for _ in range(args.clients)))  # spawn the workers before timing
            base_seq = await baseline(store, "seq", args.messages // 4, 1)
            base = await baseline(store, "conc", args.messages, args.clients)
            per_conn = await smtp_rate(service.port, pool, "one", args.messages, args.clients, 1)
            batched = await smtp_rate(service.port, pool, "hundred", args.messages, args.clients, 100)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        rows = (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"]
        await store.close()
    expected = args.messages // 4 + 3 * args.messages
    print(f"messages per mode: {args.messages}, concurrent clients: {args.clients}, rows stored: {rows}/{expected}")
    print(f"baseline store.submit, 1 at a time       : {base_seq:8.0f} msg/s")
    print(f"baseline store.submit, {args.clients} concurrent      : {base:8.0f} msg/s")
    print(f"SMTP, one connection per message        : {per_conn:8.0f} msg/s  ({per_conn / base:.2f} x baseline)"
          f"  target >= 500: {'met' if per_conn >= 500 else 'NOT met'}")
    print(f"SMTP, 100 messages per connection       : {batched:8.0f} msg/s  ({batched / base:.2f} x baseline)")


if __name__ == "__main__":
    asyncio.run(main())
