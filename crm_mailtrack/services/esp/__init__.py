"""ESP event webhooks (DESIGN 8.4): one module per provider (:mod:`.ses` through :mod:`.sns`,
:mod:`.sendgrid`, :mod:`.mailgun`, :mod:`.postmark`, :mod:`.resend`), the shared parts
(:mod:`.base`, :mod:`.config`), storing (:mod:`.store`), the request flow (:mod:`.ingest`)
and the outbound echo header (:mod:`.outbound`). Kept free of imports so that ``settings``
can read :mod:`.config` without loading the rest."""
