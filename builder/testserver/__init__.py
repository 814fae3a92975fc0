"""The K3s test server: takes nothing but a state folder; gives a K3s supervisor stand-in
on real TLS, used by tests, `pifleet boot-test` and `pifleet test-server` alone.
"""
