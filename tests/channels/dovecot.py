"""A real Dovecot IMAP server for tests: own config, loopback port, passwd-file user, maildir in a temp dir.

Debian: `apt-get install -y dovecot-imapd` (pulls dovecot-core); tests using it carry `pytest.mark.system("dovecot")`.
Runs in the foreground (`dovecot -F`) as a child process, so stopping it is terminating our own child.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from imapclient import IMAPClient

BINARY = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)

# Capabilities advertised when a test wants a server without MOVE (to exercise COPY + EXPUNGE).
NO_MOVE_CAPS = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ UIDPLUS NAMESPACE"


@dataclass
class Dovecot:
    root: Path
    port: int
    user: str = "phananh@1022.test"
    password: str = "mat-khau-thu"
    capabilities: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    def write_config(self) -> None:
        root = self.root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Dovecot never serves mail as root; the internal users come with the Debian package.
            mail_user, internal, login = "nobody", "dovecot", "dovenull"
        else:
            mail_user = internal = login = pwd.getpwuid(os.geteuid()).pw_name
        uid, gid = pwd.getpwnam(mail_user).pw_uid, pwd.getpwnam(mail_user).pw_gid
        os.chown(root / "mail", uid, gid) if os.geteuid() == 0 else None
        (root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        caps = f"\nprotocol imap {{\n  imap_capability = {self.capabilities}\n}}\n" if self.capabilities else ""
        self.config.write_text(f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = dovecot-test-{self.port}
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
log_path = {root}/dovecot.log
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
{caps}""")

    def start(self, timeout: float = 20.0) -> None:
        assert BINARY is not None
        self.write_config()
        # Its own session: the master's children (imap, log, stats) outlive a SIGTERM to the master alone.
        self.proc = subprocess.Popen([BINARY, "-F", "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited at start: {err}\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"dovecot did not listen on {self.port}\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        group = self.proc.pid  # the process group of our own child, nothing else
        _signal_group(group, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            self.proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while _signal_group(group, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(group, signal.SIGKILL)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # -- a second client, standing in for the outside world -------------------------------------------
    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=20)
        client.login(self.user, self.password)
        return client

    def deliver(self, *raws: bytes, folder: str = "INBOX") -> None:
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            for raw in raws:
                c.append(folder, raw)

    def count(self, folder: str) -> int:
        with self.client() as c:
            if not c.folder_exists(folder):
                return 0
            return int(c.select_folder(folder, readonly=True)[b"EXISTS"])

    def flags(self, folder: str) -> list[tuple[bytes, ...]]:
        with self.client() as c:
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            return [tuple(v[b"FLAGS"]) for _, v in sorted(c.fetch(uids, ["FLAGS"]).items())] if uids else []


def _signal_group(group: int, sig: int) -> bool:
    try:
        os.killpg(group, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def make_root() -> Path:
    # Dovecot's unprivileged processes must reach these paths; pytest's tmp_path parents are mode 0700.
    root = Path(tempfile.mkdtemp(prefix="dovecot-test-"))
    root.chmod(0o755)
    return root
