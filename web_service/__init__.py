"""web_service: the registry in a browser, built from the three APIs."""
