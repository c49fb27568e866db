"""A real OpenLDAP server (Debian's slapd) for the tests, on a loopback port, with a test directory.

The directory under ``dc=example,dc=org``: ``ou=people`` (inetOrgPerson
entries), ``ou=groups`` (groupOfNames), and a service account
``cn=chat-reader,ou=services`` that the app binds as to search. Only bound
clients may read; passwords are only usable to bind. The server speaks plain
LDAP and StartTLS (a throwaway CA and certificate for 127.0.0.1);
``require_tls=True`` refuses every operation that is not under TLS.

Entries are changed with ldap-utils (``ldapadd``, ``ldapmodify``,
``ldapdelete``) as the directory's root, as an administrator would.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers import free_port, wait_for_port

SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "directory-root-pw"
READER_DN = f"cn=chat-reader,ou=services,{SUFFIX}"
READER_PASSWORD = "reader-SECRET-pw-5678"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
INSTALL = "Install it with `make test-deps` (as root) or `sudo apt-get install -y slapd ldap-utils`."


def missing_binaries() -> list[str]:
    """The slapd / ldap-utils programs this module runs that are not installed."""
    wanted = {"slapd": "/usr/sbin/slapd", "ldapadd": None, "ldapmodify": None, "ldapdelete": None}
    return [name for name, path in wanted.items() if not (shutil.which(name) or (path and Path(path).exists()))]


def group_dn(name: str) -> str:
    return f"cn={name},{GROUPS}"


def person_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


class LdapServer:
    """One slapd process with its own configuration, database and certificates in a temporary folder."""

    def __init__(self, *, require_tls=False):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="slapd-"))
        self.require_tls = require_tls
        self.proc = None

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    def env(self, **overrides) -> dict[str, str]:
        """The app's LDAP_* environment for this directory (a Stack's ``extra_env``)."""
        return {
            "LDAP_SERVER_URI": self.uri,
            "LDAP_BIND_DN": READER_DN,
            "LDAP_BIND_PASSWORD": READER_PASSWORD,
            "LDAP_USER_SEARCH_BASE": PEOPLE,
            "LDAP_GROUP_SEARCH_BASE": GROUPS,
            "LDAP_GROUP_TYPE": "groupOfNames",
            "LDAP_STAFF_GROUPS": group_dn("chat-staff"),
            "LDAP_SUPERUSER_GROUPS": group_dn("chat-admins"),
            **overrides,
        }

    def _certificates(self):
        # A CA and a server certificate for 127.0.0.1 signed by it: what a company's internal CA hands out.
        def openssl(*args):
            subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test LDAP CA",
            "-keyout", "ca-key.pem", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "req.pem",
        )  # fmt: skip
        (self.dir / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        openssl(
            "x509", "-req", "-in", "req.pem", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "cert.pem",
        )  # fmt: skip

    def _config(self) -> str:
        includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in SCHEMAS)
        return (
            f"{includes}"
            "modulepath /usr/lib/ldap\n"
            "moduleload back_mdb\n"
            f"pidfile {self.dir / 'slapd.pid'}\n"
            f"TLSCACertificateFile {self.dir / 'ca.pem'}\n"
            f"TLSCertificateFile {self.dir / 'cert.pem'}\n"
            f"TLSCertificateKeyFile {self.dir / 'key.pem'}\n"
            # security tls=1: no operation, binds included, without TLS.
            + ("security tls=1\n" if self.require_tls else "")
            + "database mdb\n"
            f'suffix "{SUFFIX}"\n'
            f'rootdn "{ROOT_DN}"\n'
            f"rootpw {ROOT_PASSWORD}\n"
            f"directory {self.dir / 'data'}\n"
            "maxsize 10485760\n"
            "access to attrs=userPassword by anonymous auth by * none\n"
            "access to * by users read by * none\n"
        )

    def start(self):
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"OpenLDAP is not installed ({', '.join(missing)} missing). {INSTALL}")
        self._certificates()
        (self.dir / "data").mkdir()
        (self.dir / "slapd.conf").write_text(self._config())
        slapd = shutil.which("slapd") or "/usr/sbin/slapd"
        # -d 0: stay in the foreground (a child we can stop) without debug output. As root it
        # runs as root: it only ever listens on 127.0.0.1 and reads this folder.
        self.proc = subprocess.Popen(
            [slapd, "-h", f"{self.uri}/", "-f", str(self.dir / "slapd.conf"), "-d", "0"],
            stdout=(self.dir / "slapd.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, proc=self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(self.dir / 'slapd.log').read_text(errors='replace')}") from None
        self.add(
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
            + "".join(f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n\n" for ou in SCHEMA_OUS)
            + f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
            f"cn: chat-reader\nuserPassword: {READER_PASSWORD}\n\n"
            # groupOfNames needs a member: the root stands in for "nobody else".
             + "".join(group_entry(name, []) for name in ("chat-staff", "chat-admins", "chat-users"))
        )
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- changing the directory, as its administrator ---

    def _run(self, program, *args, ldif=None):
        # StartTLS (-ZZ) always: it works on both kinds of server, and checks the certificate.
        command = [program, "-x", "-ZZ", "-H", self.uri, "-D", ROOT_DN, "-w", ROOT_PASSWORD, *args]
        env = {"LDAPTLS_CACERT": str(self.ca_file), "PATH": "/usr/bin:/bin"}
        result = subprocess.run(command, input=ldif, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip()}")

    def add(self, ldif: str):
        self._run("ldapadd", ldif=ldif)

    def modify(self, ldif: str):
        self._run("ldapmodify", ldif=ldif)

    def delete(self, dn: str):
        self._run("ldapdelete", dn)

    def add_person(self, uid, password, *, given="Test", surname="Person", mail=None, groups=()):
        """A person ``uid`` who can bind with ``password``, a member of ``groups`` (names under ou=groups)."""
        self.add(
            f"dn: {person_dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {surname}\n"
            f"givenName: {given}\nsn: {surname}\nmail: {mail or f'{uid}@example.org'}\nuserPassword: {password}\n"
        )
        for group in groups:
            self.add_member(group, uid)

    def add_member(self, group, uid):
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\nadd: member\nmember: {person_dn(uid)}\n")

    def remove_member(self, group, uid):
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\ndelete: member\nmember: {person_dn(uid)}\n")


SCHEMA_OUS = ("people", "groups", "services")


def group_entry(name, uids) -> str:
    members = "".join(f"member: {person_dn(uid)}\n" for uid in uids) or f"member: {ROOT_DN}\n"
    return f"dn: {group_dn(name)}\nobjectClass: groupOfNames\ncn: {name}\n{members}\n"
