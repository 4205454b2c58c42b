"""The identity service: accounts, sessions, and who holds which role in which org.

Every change (a sign-up, a verification, a password changed or reset, a membership, a platform
role, an account disabled) is one transaction that also writes its audit row, without secrets.
Mail goes out after the commit; a mail that cannot be sent is logged (without its link) and
the change stands: the user can ask for another.

Passwords are hashed and checked outside transactions (argon2 takes tens of milliseconds), so
concurrent guesses against one account may each pass the throttle's check before the others'
failures are written: the overshoot is at most the number of requests in flight.
"""

from __future__ import annotations

from hoodrun.identity._accounts import Accounts
from hoodrun.identity._members import Members
from hoodrun.identity._sessions import Sessions

__all__ = ["IdentityService"]


class IdentityService(Accounts, Sessions, Members):
    """Accounts, sessions and memberships in the business store.

    ``mailer`` sends the verification, reset and invitation mails (``None`` or without
    ``smtp.host``: they are logged as not sent). ``public_url`` starts their links (default:
    ``web.public_url``, else ``http://{api_listen}``). ``now`` is the clock (tests inject one);
    ``env`` where ``HOODRUN_JWT_SECRET`` is looked up (default: the process's environment).
    """
