"""Received mail for the demo: what comes back after a campaign, as real servers write it.

Each function returns the raw bytes of one message about a sent ``Message`` (its
``Message-ID``, subject and address), for ``mailtrack.ingest_mail``: a person's reply that
quotes the original (plain text and HTML, as Gmail writes it), a Postfix hard bounce
(RFC 3464, quoting the original's headers), a feedback-loop spam complaint (RFC 5965 ARF,
as Yahoo's sends it) and an Exchange out-of-office answer (RFC 3834 ``Auto-Submitted``).
"""
from __future__ import annotations

import datetime as dt
from email.utils import format_datetime

from crm_mailtrack import Message

SENDER = "Northwind CRM <news@northwind.example>"


def _mid(message: Message) -> str:
    value = message.internet_message_id or f"<{message.id}@northwind.example>"
    return value if value.startswith("<") else f"<{value}>"


def _original_headers(message: Message, when: dt.datetime) -> str:
    return (f"From: {SENDER}\r\nTo: {message.email}\r\nSubject: {message.subject}\r\n"
            f"Date: {format_datetime(when)}\r\nMessage-ID: {_mid(message)}\r\nMIME-Version: 1.0\r\n")


def reply(message: Message, name: str, text: str, when: dt.datetime, sent: dt.datetime, n: int) -> bytes:
    """A person's reply from Gmail: ``text`` on top, the original quoted below its
    "On ... wrote:" line, in a text and an HTML part."""
    quoted_on = f"On {sent:%a, %b %d, %Y at %H:%M}, Northwind CRM <news@northwind.example> wrote:"
    quote_text = f"> {message.subject}\r\n>\r\n> A short note from the Northwind team.\r\n"
    html_text = "".join(f"<div>{line}</div>" if line else "<div><br></div>" for line in text.split("\n"))
    return (
        f"From: {name} <{message.email}>\r\nTo: {SENDER}\r\nSubject: Re: {message.subject}\r\n"
        f"Date: {format_datetime(when)}\r\nMessage-ID: <CAF+demo-reply-{n}@mail.gmail.com>\r\n"
        f"In-Reply-To: {_mid(message)}\r\nReferences: {_mid(message)}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="000000000000r{n}"\r\n\r\n'
        f"--000000000000r{n}\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\r\n"
        f"{text.replace(chr(10), chr(13) + chr(10))}\r\n\r\n{quoted_on}\r\n\r\n{quote_text}\r\n"
        f"--000000000000r{n}\r\nContent-Type: text/html; charset=\"UTF-8\"\r\n\r\n"
        f'<div dir="ltr">{html_text}</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        f'{quoted_on}<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">'
        f"<h1>{message.subject}</h1><p>A short note from the Northwind team.</p></blockquote></div>\r\n"
        f"--000000000000r{n}--\r\n"
    ).encode()


def hard_bounce(message: Message, when: dt.datetime, sent: dt.datetime) -> bytes:
    """Postfix's RFC 3464 report: the recipient's server said 550 5.1.1 (no such user)."""
    rcpt = message.email
    domain = rcpt.split("@")[1]
    return (
        f"Return-Path: <>\r\nFrom: MAILER-DAEMON@mail.northwind.example (Mail Delivery System)\r\n"
        f"To: news@northwind.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(when)}\r\nMessage-ID: <{when:%Y%m%d%H%M%S}.{message.id[:8]}@mail.northwind.example>\r\n"
        f"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="4F2C1A0.1718096652/mail"\r\n\r\n'
        f"--4F2C1A0.1718096652/mail\r\nContent-Description: Notification\r\nContent-Type: text/plain; "
        f"charset=us-ascii\r\n\r\nThis is the mail system at host mail.northwind.example.\r\n\r\nI'm sorry to have to "
        f"inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n"
        f"<{rcpt}>: host mx1.{domain}[203.0.113.25] said: 550 5.1.1\r\n    <{rcpt}>: Recipient address "
        f"rejected: User unknown in virtual mailbox table\r\n\r\n"
        f"--4F2C1A0.1718096652/mail\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status"
        f"\r\n\r\nReporting-MTA: dns; mail.northwind.example\r\nArrival-Date: {format_datetime(sent)}\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nOriginal-Recipient: rfc822;{rcpt}\r\nAction: failed\r\n"
        f"Status: 5.1.1\r\nRemote-MTA: dns; mx1.{domain}\r\nDiagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: "
        f"Recipient address rejected: User unknown in virtual mailbox table\r\n\r\n"
        f"--4F2C1A0.1718096652/mail\r\nContent-Description: Undelivered Message Headers\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n{_original_headers(message, sent)}\r\n"
        f"--4F2C1A0.1718096652/mail--\r\n"
    ).encode()


def complaint(message: Message, when: dt.datetime, sent: dt.datetime) -> bytes:
    """Yahoo's feedback loop: an ARF report (RFC 5965) that the recipient marked it as spam."""
    return (
        f"From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>\r\nTo: fbl@northwind.example\r\n"
        f"Subject: FW: {message.subject}\r\nDate: {format_datetime(when)}\r\n"
        f"Message-ID: <{int(when.timestamp())}.arf@arf.mail.yahoo.com>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="----=_Part_arf"\r\n\r\n'
        f"------=_Part_arf\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThis is an email abuse report "
        f"for an email message received from IP 192.0.2.10 on {format_datetime(sent)}.\r\n"
        f"For more information about this format please see http://www.mipassoc.org/arf/.\r\n\r\n"
        f"------=_Part_arf\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
        f"User-Agent: Yahoo!-Mail-Feedback/2.0\r\nVersion: 1\r\nOriginal-Mail-From: <news@northwind.example>\r\n"
        f"Original-Rcpt-To: <{message.email}>\r\nArrival-Date: {format_datetime(sent)}\r\n"
        f"Reported-Domain: northwind.example\r\nSource-IP: 192.0.2.10\r\n\r\n"
        f"------=_Part_arf\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
        f"{_original_headers(message, sent)}Content-Type: text/html; charset=utf-8\r\n\r\n"
        f"<h1>{message.subject}</h1>\r\n\r\n------=_Part_arf--\r\n"
    ).encode()


def out_of_office(message: Message, name: str, when: dt.datetime, back: dt.date) -> bytes:
    """Exchange's automatic reply while its user is away (never counted as a reply)."""
    return (
        f"From: {name} <{message.email}>\r\nTo: {SENDER}\r\nSubject: Automatic reply: {message.subject}\r\n"
        f"Date: {format_datetime(when)}\r\nMessage-ID: <AM0PR04MB{int(when.timestamp())}@outlook.office365.com>\r\n"
        f"In-Reply-To: {_mid(message)}\r\nReferences: {_mid(message)}\r\nAuto-Submitted: auto-replied\r\n"
        f"X-MS-Exchange-Inbox-Rules-Loop: {message.email}\r\nX-Auto-Response-Suppress: All\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\n"
        f"Thank you for your message. I am out of the office until {back:%A, %B %d} with limited access to "
        f"email.\r\nFor urgent matters please contact our office.\r\n\r\n{name}\r\n"
    ).encode()


__all__ = ["complaint", "hard_bounce", "out_of_office", "reply"]
