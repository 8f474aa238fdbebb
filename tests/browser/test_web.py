"""The DistribuSync web page in headless Chromium (see run.sh).

Each check drives the page as a person would (clicks, typing, the file
input) against a real `distribusync serve --web-listen` on loopback, and
checks what a person would see, or the bytes they would get. No fixed
sleeps: every wait polls for a condition with a generous timeout.
"""
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from selenium.common.exceptions import StaleElementReferenceException

BIN = os.path.abspath(sys.argv[1])
SHOTS = os.path.abspath("target/web-shots")
WAIT = 30  # seconds: a safety net on a loaded machine, not a timing
MiB = 1024 * 1024


def log(*a):
    print("browser test:", *a, flush=True)


class Server:
    """`distribusync serve` with its web page, both on loopback port 0."""

    def __init__(self, root, home):
        self.root, self.home = root, home
        self.env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                        RUST_LOG="warn")

    def token(self, name, scopes):
        out = subprocess.run([BIN, "token", "create", name, "--scopes", scopes, "--root", self.root],
                             env=self.env, check=True, capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1].strip()

    def start(self):
        self.proc = subprocess.Popen(
            [BIN, "serve", "--root", self.root, "--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0"],
            env=self.env, stderr=subprocess.PIPE, text=True)
        self.grpc = self.web = None
        deadline = time.time() + WAIT
        while (self.grpc is None or self.web is None) and time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            m = re.search(r"serving .* on (http://\S+)", line)
            if m:
                self.grpc = m.group(1)
            m = re.search(r"web page on (http://\S+?)/?$", line.strip())
            if m:
                self.web = m.group(1)
        assert self.web and self.grpc, "the server did not start"
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def put(self, local, remote, token):
        env = dict(self.env, DISTRIBUSYNC_TOKEN=token)
        subprocess.run([BIN, "put", "--server", self.grpc, local, remote], env=env, check=True,
                       capture_output=True)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=WAIT)


def browser(download_dir, width=1280, height=900):
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--lang=en-US"]:
        o.add_argument(a)
    o.add_experimental_option("prefs", {"download.default_directory": download_dir,
                                        "download.prompt_for_download": False})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    d = webdriver.Chrome(options=o, service=service)
    d.set_script_timeout(WAIT)
    return d


def until(d, what, fn):
    # The list re-renders on every change event: a row found a moment ago
    # may be gone; look again.
    return WebDriverWait(d, WAIT, poll_frequency=0.02,
                         ignored_exceptions=[StaleElementReferenceException]).until(
        lambda _: fn(), message=what)


def in_row(d, name, how, what, then):
    """Finds `what` in the row of `name` and does `then` to it, again if the
    row was re-rendered meanwhile; returns what `then` returns."""
    out = []

    def attempt():
        r = row(d, name)
        if r is None:
            return False
        out.append(then(r.find_element(how, what)))
        return True
    until(d, f"{what} in the row of {name}", attempt)
    return out[-1]


def row(d, name):
    for tr in d.find_elements(By.CSS_SELECTOR, "#rows tr"):
        if tr.get_attribute("data-name") == name:
            return tr
    return None


def shot(d, name, width=None, height=None):
    os.makedirs(SHOTS, exist_ok=True)
    if width:
        d.set_window_size(width, height)
    d.save_screenshot(os.path.join(SHOTS, name))


def sign_in(d, web, token):
    d.get(web + "/#/files/")
    until(d, "the sign-in form", lambda: d.find_element(By.ID, "view-signin").is_displayed())
    box = d.find_element(By.ID, "token")
    box.send_keys(token)
    box.send_keys(Keys.ENTER)
    until(d, "the file list", lambda: d.find_element(By.ID, "view-files").is_displayed())


def answer_dialog(d, value=None):
    until(d, "the dialog", lambda: d.find_element(By.ID, "ask").is_displayed())
    if value is not None:
        box = d.find_element(By.ID, "ask-input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value)
    d.find_element(By.ID, "ask-ok").click()
    until(d, "the dialog to close", lambda: not d.find_element(By.ID, "ask").is_displayed())


def api(d, method, url, body=None):
    """A same-origin call from the page, with its CSRF token: what the page
    itself would send (used to show the server refuses, not only the UI)."""
    return d.execute_async_script("""
        const [method, url, body, done] = arguments;
        fetch('/api/session').then(r => r.json()).then(s =>
          fetch(url, {method, headers: {'content-type': 'application/json', 'x-csrf-token': s.csrf},
                      body: body === null ? undefined : JSON.stringify(body)}))
          .then(r => done(r.status), e => done(String(e)));
    """, method, url, body)


def main():
    work = tempfile.mkdtemp(prefix="ds-web-")
    downloads = os.path.join(work, "downloads")
    os.makedirs(downloads)
    server = Server(os.path.join(work, "MASTER"), os.path.join(work, "home"))
    os.makedirs(server.root)
    rw = server.token("owner", "read,write,compute")
    ro = server.token("viewer", "read")
    server.start()
    web = server.web
    log("server", server.grpc, "page", web)
    d = browser(downloads)
    failures = []
    try:
        # Sign in with a token.
        d.get(web)
        until(d, "sign-in", lambda: d.find_element(By.ID, "view-signin").is_displayed())
        shot(d, "signin.png")
        sign_in(d, web, rw)
        log("signed in")

        # Upload 20 MiB through the file input; listed with the right size.
        big = os.path.join(work, "big.bin")
        data = os.urandom(20 * MiB)
        with open(big, "wb") as f:
            f.write(data)
        d.find_element(By.ID, "upload-input").send_keys(big)
        until(d, "big.bin listed", lambda: row(d, "big.bin") is not None)
        size = in_row(d, "big.bin", By.CSS_SELECTOR, "td.num", lambda c: (c.get_attribute("data-bytes"), c.text))
        assert size == (str(20 * MiB), "20.0 MiB"), size
        log("uploaded 20 MiB by the file input, listed as", size[1])

        # Download it with the page's link; same bytes.
        in_row(d, "big.bin", By.LINK_TEXT, "Download", lambda e: e.click())
        target = os.path.join(downloads, "big.bin")
        until(d, "the download", lambda: os.path.exists(target) and os.path.getsize(target) == 20 * MiB
              and not any(n.endswith(".crdownload") for n in os.listdir(downloads)))
        with open(target, "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest(), "downloaded bytes differ"
        log("downloaded 20 MiB: same bytes")

        # Rename, then delete (with confirmation).
        in_row(d, "big.bin", By.XPATH, ".//button[text()='Rename']", lambda e: e.click())
        answer_dialog(d, "renamed.bin")
        until(d, "renamed.bin listed", lambda: row(d, "renamed.bin") is not None and row(d, "big.bin") is None)
        in_row(d, "renamed.bin", By.XPATH, ".//button[text()='Delete']", lambda e: e.click())
        answer_dialog(d)
        until(d, "renamed.bin gone", lambda: row(d, "renamed.bin") is None)
        log("renamed and deleted")

        # A file uploaded by the CLI shows up without a reload.
        small = os.path.join(work, "from-cli.txt")
        with open(small, "w") as f:
            f.write("hello from the CLI\n")
        marker = d.execute_script("return window.__marker = Math.random();")
        t0 = time.monotonic()
        server.put(small, "from-cli.txt", rw)
        t_put = time.monotonic()
        until(d, "the CLI's file in the open page", lambda: row(d, "from-cli.txt") is not None)
        seen = time.monotonic()
        assert d.execute_script("return window.__marker;") == marker, "the page was reloaded"
        log(f"CLI upload appeared {seen - t_put:.3f} s after `put` returned "
            f"({seen - t0:.3f} s after it started), without a reload")

        # Awkward names display as text and download intact.
        odd = ["with space.txt", "hash#and%percent.txt", "ünïcødé 名前.txt", "שלום עולם.txt",
               "<script>alert(1)<\u2215script>.txt", "<img src=x onerror=alert(2)>.txt"]
        for i, name in enumerate(odd):
            p = os.path.join(work, f"odd{i}")
            with open(p, "w") as f:
                f.write(f"content {i}\n")
            server.put(p, name, rw)
        until(d, "odd names listed", lambda: all(row(d, n) is not None for n in odd))
        for n in odd:
            text = in_row(d, n, By.CSS_SELECTOR, "td.name a.file", lambda e: e.text)
            assert text == n, (text, n)
        assert not d.find_elements(By.CSS_SELECTOR, "#rows script, #rows img"), "a name became HTML"
        in_row(d, odd[1], By.LINK_TEXT, "Download", lambda e: e.click())
        got = os.path.join(downloads, odd[1])
        until(d, "the odd download", lambda: os.path.exists(got))
        until(d, "its bytes", lambda: open(got).read() == "content 1\n")
        log("odd names shown as text; one downloaded intact")

        # Folders and a conflict copy.
        server.put(small, "photos/2024/a.txt", rw)
        server.put(small, "notes.conflict-laptop-20240102-030405.txt", rw)
        until(d, "folder and conflict copy", lambda: row(d, "photos") is not None
              and row(d, "notes.conflict-laptop-20240102-030405.txt") is not None)
        tags = in_row(d, "notes.conflict-laptop-20240102-030405.txt", By.CSS_SELECTOR, "td.name", lambda e: e.text)
        assert "conflict copy" in tags, tags
        shot(d, "files-desktop.png")

        # Keyboard: sort by size from the keyboard, open a folder with Enter.
        d.find_element(By.CSS_SELECTOR, "th button[data-sort=size]").send_keys(Keys.ENTER)
        until(d, "sorted by size", lambda: d.find_element(By.CSS_SELECTOR, "th:has(button[data-sort=size])").get_attribute("aria-sort") == "ascending")
        in_row(d, "photos", By.CSS_SELECTOR, "a.folder", lambda e: e.send_keys(Keys.ENTER))
        until(d, "inside photos", lambda: row(d, "2024") is not None)
        d.get(web + "/#/files/")
        until(d, "back at the top", lambda: row(d, "photos") is not None)

        # Phone width and 200% zoom: nothing wider than the screen.
        d.set_window_size(390, 844)
        until(d, "phone layout", lambda: d.execute_script("return innerWidth") <= 400)
        wide = d.execute_script("return document.documentElement.scrollWidth > innerWidth + 1")
        assert not wide, "the page scrolls sideways at phone width"
        shot(d, "files-phone.png")
        d.set_window_size(1280, 900)
        # 200% zoom of a 1280-pixel window: a 640-CSS-pixel viewport at
        # two device pixels per CSS pixel, as the browser's zoom makes it.
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 640, "height": 450, "deviceScaleFactor": 2, "mobile": False})
        until(d, "zoomed layout", lambda: d.execute_script("return innerWidth") == 640)
        wide = d.execute_script("return document.documentElement.scrollWidth > innerWidth + 1")
        assert not wide, "the page scrolls sideways at 200% zoom"
        shot(d, "files-zoom200.png")
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        # Share link: works without a session, stops after revocation.
        in_row(d, "from-cli.txt", By.XPATH, ".//button[text()='Share']", lambda e: e.click())
        answer_dialog(d, "1")
        until(d, "the link listed", lambda: d.find_elements(By.CSS_SELECTOR, "#share-list li input"))
        url = d.find_element(By.CSS_SELECTOR, "#share-list li input").get_attribute("value")
        shot(d, "shares.png")
        with urllib.request.urlopen(url) as r:
            assert r.read() == b"hello from the CLI\n"
        d.find_element(By.XPATH, "//button[text()='Revoke']").click()
        answer_dialog(d)
        until(d, "the link gone", lambda: not d.find_elements(By.CSS_SELECTOR, "#share-list li"))
        try:
            urllib.request.urlopen(url)
            raise AssertionError("a revoked link still works")
        except urllib.error.HTTPError as e:
            assert e.code == 404, e.code
        log("share link served without a session, refused after revocation")

        # Compute, at once and as a job (the list updates by itself).
        d.get(web + "/#/compute")
        until(d, "compute", lambda: d.find_element(By.ID, "view-compute").is_displayed())
        d.find_element(By.ID, "numbers").send_keys("1 2 3 4.5")
        d.find_element(By.ID, "run-now").click()
        until(d, "the sum", lambda: d.find_element(By.ID, "compute-result").text == "Sum: 10.5")
        d.find_element(By.CSS_SELECTOR, "input[name=op][value=sort]").click()
        d.find_element(By.ID, "run-job").click()
        until(d, "the job done", lambda: d.find_elements(By.CSS_SELECTOR, "#job-rows tr[data-state=done]"))
        d.find_element(By.XPATH, "//button[text()='Show result']").click()
        until(d, "the job's result", lambda: "1.0 2.0 3.0 4.5" in d.find_element(By.ID, "job-rows").text)
        shot(d, "compute.png")
        log("compute: sum at once, sort as a job")

        # A forged cross-site POST from another origin is refused.
        evil_dir = os.path.join(work, "evil")
        os.makedirs(evil_dir)
        with open(os.path.join(evil_dir, "index.html"), "w") as f:
            f.write(f"""<!doctype html><form id=f method=POST action="{web}/api/delete"
                enctype="text/plain"><input name='{{"path":"from-cli.txt","x":"' value='"}}'></form>
                <script>document.getElementById('f').submit()</script>""")
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=evil_dir, **k)
        evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        # Same site (127.0.0.1, another port): the cookie IS sent, so what
        # refuses is the CSRF check, not SameSite.
        d.get(f"http://127.0.0.1:{evil.server_address[1]}/index.html")
        until(d, "the forged post answered", lambda: "cross-site" in d.page_source)
        evil.shutdown()
        d.get(web + "/#/files/")
        until(d, "the file still there", lambda: row(d, "from-cli.txt") is not None)
        log("forged cross-site POST refused; the file is still there")

        # Read-only token: no upload or delete controls, and the server refuses.
        d.find_element(By.ID, "signout").click()
        until(d, "signed out", lambda: d.find_element(By.ID, "view-signin").is_displayed())
        sign_in(d, web, ro)
        until(d, "listing", lambda: row(d, "from-cli.txt") is not None)
        assert not d.find_element(By.ID, "write-tools").is_displayed(), "upload shown to a read-only token"
        assert not d.find_elements(By.XPATH, "//button[text()='Delete' or text()='Rename']"), "delete shown"
        assert api(d, "POST", "/api/delete", {"path": "from-cli.txt"}) == 403
        status = d.execute_async_script("""
            const done = arguments[0];
            fetch('/api/session').then(r => r.json()).then(s =>
              fetch('/api/upload?path=x.txt&size=1&modified_ms=0', {method: 'PUT', body: 'x',
                     headers: {'x-csrf-token': s.csrf}})).then(r => done(r.status));""")
        assert status == 403, status
        log("read-only token: no write controls; delete and upload refused (403)")

        # A session that ends (its token revoked) returns to sign-in and
        # keeps the page's place.
        d.get(web + "/#/files/photos/2024")
        until(d, "inside photos/2024", lambda: row(d, "a.txt") is not None)
        subprocess.run([BIN, "token", "revoke", "viewer", "--root", server.root], env=server.env,
                       check=True, capture_output=True)
        until(d, "back at sign-in", lambda: d.find_element(By.ID, "view-signin").is_displayed())
        assert d.execute_script("return location.hash") == "#/files/photos/2024"
        box = d.find_element(By.ID, "token")
        box.send_keys(rw)
        box.send_keys(Keys.ENTER)
        until(d, "the same folder after signing in", lambda: row(d, "a.txt") is not None)
        log("revoked session: back to sign-in, then the same folder")
    except Exception as e:  # noqa: BLE001 - report, screenshot, fail
        failures.append(e)
        shot(d, "failure.png")
        log("FAILED:", repr(e))
        log("page text:", d.find_element(By.TAG_NAME, "body").text[:2000])
    finally:
        d.quit()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        sys.exit(1)
    log("all checks passed")


if __name__ == "__main__":
    main()
