"""Every test gets a fresh app on its own temporary data folder (fixtures from dicomweb_wsgi.testing)."""
pytest_plugins = ["dicomweb_wsgi.testing"]
