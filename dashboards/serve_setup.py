"""Run once by ``panel serve --setup`` before the server starts (:func:`stack.dashboard.serve_command`).

With ``--reuse-sessions warm`` the HTML of a page is rendered from an earlier session of the
same page and the visitor's own session is built meanwhile, while the browser loads the
scripts, instead of before the HTML is sent (~0.3 s of a first visit here). The page's HTML
holds no data of that earlier session (its roots' ids, the title and the script tags; the
document comes over the visitor's websocket), so the key is the path alone. Setting a key
function also keeps the start-up session of ``--warm``, which nobody is signed in to, from
being the one reused.
"""

import panel as pn

pn.config.session_key_func = lambda request: request.path
