"""Notifications: email over SMTP and the usage, error-rate and invoice notices.

- ``mail``: ``Mailer``, one message over SMTP (``smtp:`` in the config).
- ``watch``: ``Watcher``, the ``notify-watch`` job: quotas, spending caps and error rates
  crossed become ``usage.threshold``, ``quota.exhausted`` and ``error_rate.spike`` events, each
  sent once (the ``notices`` table).
- ``mailing``: ``EventMailer``, the ``notify-email`` jobs: each mailed event to each member who
  wants it (``recipients``), rendered by ``messages``.
- ``jobs``: ``handlers(...)`` and ``schedules(config)`` for the worker; ``kinds``: the job kinds,
  their policies and the mailed events.

This package's root imports nothing: the config imports ``hoodrun.notify.config``, and the rest
needs the config. See docs/notifications.md.
"""
