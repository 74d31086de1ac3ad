"""A printable handout per student: their accounts and passwords, the server's name
and ports, the certificate's fingerprint and the practice's steps (es or en).

The handouts and the accounts file are the only places a password is written;
the teacher prints them (``handouts/all.<lang>.html``, one page per student, or
a PDF made from it with headless Chromium when it is installed) and hands
each student theirs.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

from gponsim.classroom.plan import ClassPlan, fill
from gponsim.classroom.roster import Roster, Student
from gponsim.classroom.words import LANGS, word

STYLE = """
@page { size: A4; margin: 12mm 14mm; }
body { font-family: "DejaVu Sans", Arial, sans-serif; font-size: 9.5pt; line-height: 1.3; margin: 0; color: #111; }
.sheet { page-break-after: always; break-after: page; }
.sheet:last-child { page-break-after: auto; break-after: auto; }
h1 { font-size: 14pt; margin: 0 0 1.5mm; } h2 { font-size: 11pt; margin: 4mm 0 1.5mm; }
.who { font-size: 11pt; color: #333; margin-bottom: 2mm; }
table { border-collapse: collapse; margin: 1mm 0; } td, th { border: 1px solid #999; padding: 1mm 2.5mm; text-align: left; }
th { background: #eee; } .pw, .mono { font-family: "DejaVu Sans Mono", monospace; font-size: 10.5pt; }
.pw { font-weight: bold; }
ol { padding-left: 5mm; margin: 1mm 0; } ol li { margin-bottom: 1.5mm; }
.fp { font-family: monospace; font-size: 7.5pt; word-break: break-all; }
.note { font-size: 8.5pt; color: #444; margin: 1.5mm 0; }
"""


def task_values(student: Student, roster: Roster, lab: dict) -> dict:
    """What a task's text names, for one student (see plan.PLACEHOLDERS)."""
    ports = lab.get("ports", {})
    host = lab.get("host", "127.0.0.1")
    values = {"sender": student.login, "sender_address": roster.address(student.login),
              "reader": student.reader, "reader_address": roster.address(student.reader),
              "send_to_address": roster.address(student.send_to), "host": host,
              "domain": roster.domain,
              "autoconfig_url": f"http://{host}:{ports.get('autoconfig', 80)}/mail/config-v1.1.xml"}
    values.update({name: ports.get(name, "") for name in
                   ("smtp", "submission", "imap", "imaps", "pop3", "pop3s", "autoconfig")})
    return values


def certificate_fingerprint(cert_file: Path) -> str:
    """The SHA-256 fingerprint of the lab's certificate, as Thunderbird shows it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def sheet(student: Student, roster: Roster, plan: ClassPlan, lab: dict, lang: str) -> str:
    """One student's page (HTML, no <html> around it)."""
    e = html.escape
    w = lambda key, **kw: e(word(key, lang, **kw))  # noqa: E731
    values = task_values(student, roster, lab)
    rows = []
    for _s, account, role in ((student, student.login, "sender"), (student, student.reader, "receiver")):
        if role == "receiver" and account == student.login:
            continue
        rows.append(f"<tr><td>{w('handout_role_' + role)}</td><td class=mono>{e(roster.address(account))}</td>"
                    f"<td class=mono>{e(account)}</td><td class=pw>{e(roster.passwords.get(account, ''))}</td></tr>")
    ports = lab.get("ports", {})
    servers = [(w("handout_in_imap"), ports.get("imap"), "STARTTLS"),
               (w("handout_in_imaps"), ports.get("imaps"), "SSL/TLS"),
               (w("handout_out_smtp"), ports.get("submission"), "STARTTLS")]
    server_rows = "".join(f"<tr><td>{name}</td><td class=mono>{e(str(values['host']))}</td>"
                          f"<td class=mono>{port}</td><td>{sec}</td></tr>" for name, port, sec in servers if port)
    steps = "".join(f"<li><b>{e(t.title[lang])}.</b> {e(' '.join(fill(t.do[lang], values).split()))}</li>"
                    for t in plan.tasks)
    partner = (f"<p>{w('handout_partner', partner=student.partner)}</p>" if student.partner else "")
    page = lab.get("student_url")
    fingerprint = lab.get("fingerprint")
    return f"""<section class="sheet">
<h1>{e(plan.lesson.title[lang])}</h1>
<div class="who">{w('handout_for')} <b>{e(student.label)}</b>{f" ({e(student.login)})" if student.name else ""}</div>
<h2>{w('handout_accounts')}</h2>
<table><tr><th>{w('handout_account')}</th><th>{w('handout_address')}</th><th>{w('handout_user')}</th><th>{w('handout_password')}</th></tr>
{''.join(rows)}</table>
{partner}
<h2>{w('handout_server')}</h2>
<table><tr><th></th><th>{w('handout_host')}</th><th>{w('handout_port')}</th><th>{w('handout_security')}</th></tr>
{server_rows}</table>
<p class="note">{w('handout_auth')} · autoconfig: <span class=mono>{e(values['autoconfig_url'])}</span></p>
{f'<p class="note">{w("handout_fingerprint")}<br><span class="fp">{e(fingerprint)}</span></p>' if fingerprint else ''}
<h2>{w('handout_steps')}</h2>
<ol>{steps}</ol>
{f'<p class="note">{w("handout_page", url=page)}</p>' if page else ''}
<p class="note">{w('handout_keep')}</p>
</section>"""


def document(sheets: list[str], lang: str, title: str) -> str:
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(sheets)}</body></html>\n")


def write_handouts(folder: Path, roster: Roster, plan: ClassPlan, lab: dict,
                   langs=LANGS, pdf: bool = False) -> dict[str, Path]:
    """``folder/<login>.<lang>.html`` for each student and ``folder/all.<lang>.html``
    (one page each, to print); with ``pdf``, ``all.<lang>.pdf`` too when Chromium is
    installed. Returns {lang: the all-in-one file}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)                       # they hold the passwords
    made = {}
    for lang in langs:
        sheets = []
        for s in roster.students:
            one = sheet(s, roster, plan, lab, lang)
            sheets.append(one)
            _private(folder / f"{s.login}.{lang}.html",
                     document([one], lang, f"{plan.lesson.title[lang]} — {s.login}"))
        every = folder / f"all.{lang}.html"
        _private(every, document(sheets, lang, plan.lesson.title[lang]))
        made[lang] = every
        if pdf:
            print_pdf(every, every.with_suffix(".pdf"))
    return made


def _private(path: Path, text: str) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def print_pdf(page: Path, out: Path) -> Path | None:
    """The page as PDF with headless Chromium (None when it is not installed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        return None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gponsim-pdf-") as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
                        "--no-pdf-header-footer", f"--print-to-pdf={out}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    out.chmod(0o600)
    return out
