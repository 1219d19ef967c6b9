# Share links arrive with the sharing issue; the app exists so the layout is in place.
