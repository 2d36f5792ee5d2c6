"""The admin in a real headless Chromium: log in, filter failed jobs, run one again.

Skipped only when Chromium or its driver is not installed (Debian: ``apt-get
install chromium chromium-driver``; ``.ci/run`` installs them). Saves a
screenshot to ``artifacts/admin_run_again.png`` (and of the job's page and the
queue overview next to it).
"""

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from async_jobs import Job, schedule

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
WAIT = 15  # seconds, for any page or element

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs chromium and chromedriver (apt-get install chromium "
        "chromium-driver)",
    ),
]


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Never let Selenium Manager look for a driver on the network.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # as root, in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options,
        service=Service(executable_path=CHROMEDRIVER, log_output=os.devnull),
    )
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def failed_job(label: str) -> Job:
    job = schedule("shop.tasks.write_then_fail", args=[label], meta={"max_attempts": 1})
    with pytest.raises(RuntimeError):
        job.execute()
    return job


def test_log_in_filter_failed_jobs_and_run_one_again(
    live_server, browser, django_user_model
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    django_user_model.objects.create_superuser("operator", password="s3cret-pass")
    pending = schedule("shop.tasks.noop", run_after=timedelta(days=1))
    first, second = failed_job("first"), failed_job("second")
    wait = WebDriverWait(browser, WAIT)

    browser.get(live_server.url + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(seen.presence_of_element_located((By.ID, "user-tools")))

    browser.get(live_server.url + reverse("admin:async_jobs_job_changelist"))
    filters = browser.find_element(By.ID, "changelist-filter")
    filters.find_element(By.LINK_TEXT, "Failed").click()
    wait.until(seen.url_contains("status__exact=failed"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 2
    assert all("Failed" in row.text for row in rows)

    browser.find_element(
        By.CSS_SELECTOR, f"input.action-select[value='{second.pk}']"
    ).click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("requeue_jobs")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    message = wait.until(
        seen.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li"))
    )

    assert message.text == "Queued again 1 job."
    assert "status__exact=failed" in browser.current_url  # the filter stays
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "admin_run_again.png"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert [row.find_element(By.CSS_SELECTOR, "th a").text for row in rows] == [
        str(first.pk)
    ]
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {
        pending.pk: Job.Status.PENDING,
        first.pk: Job.Status.FAILED,
        second.pk: Job.Status.PENDING,
    }
    assert Job.objects.get(pk=second.pk).errors.count() == 1

    # The failed job's page shows its traceback; the overview its queue.
    browser.find_element(By.LINK_TEXT, str(first.pk)).click()
    traceback = wait.until(
        seen.visibility_of_element_located(
            (By.CSS_SELECTOR, "pre.async-jobs-traceback")
        )
    )
    assert "RuntimeError: failed after writing first" in traceback.text
    browser.execute_script("arguments[0].scrollIntoView()", traceback)
    browser.save_screenshot(str(ARTIFACTS / "admin_job_detail.png"))
    browser.get(live_server.url + reverse("admin:async_jobs_job_overview"))
    table = browser.find_element(By.CSS_SELECTOR, ".async-jobs-overview-table")
    assert "default" in table.text
    browser.save_screenshot(str(ARTIFACTS / "admin_queue_overview.png"))


def test_a_running_job_is_listed_with_its_worker_and_lease(
    live_server, browser, django_user_model
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.wait import WebDriverWait

    django_user_model.objects.create_superuser("operator", password="s3cret-pass")
    waiting = schedule("shop.tasks.noop", run_after=timedelta(days=1))
    running = schedule("shop.tasks.noop")
    now = timezone.now()
    Job.objects.filter(pk=running.pk).update(
        status=Job.Status.RUNNING,
        worker="web1:4242",
        started=now - timedelta(minutes=3),
        heartbeat=now - timedelta(seconds=10),
        lease_expires=now + timedelta(seconds=50),
        attempts=1,
    )
    wait = WebDriverWait(browser, WAIT)
    browser.get(live_server.url + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(seen.presence_of_element_located((By.ID, "user-tools")))

    browser.get(live_server.url + reverse("admin:async_jobs_job_changelist"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert [row.find_element(By.CSS_SELECTOR, "th a").text for row in rows] == [
        str(running.pk),
        str(waiting.pk),
    ]
    assert "Running" in rows[0].text
    assert "web1:4242, heartbeat 1" in rows[0].text  # 10s ago, or a little more
    assert "lease 4" in rows[0].text or "lease 50s left" in rows[0].text
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "admin_running_job.png"))

    filters = browser.find_element(By.ID, "changelist-filter")
    filters.find_element(By.LINK_TEXT, "Running").click()
    wait.until(seen.url_contains("status__exact=running"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert [row.find_element(By.CSS_SELECTOR, "th a").text for row in rows] == [
        str(running.pk)
    ]


def test_browse_errors_filter_by_class_and_open_the_job(
    live_server, browser, django_user_model
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.wait import WebDriverWait

    django_user_model.objects.create_superuser("operator", password="s3cret-pass")
    first = failed_job("first")
    other = schedule(
        "shop.tasks.send_receipt", args=["no id"], meta={"max_attempts": 1}
    )
    with pytest.raises(ValueError):
        other.execute()
    wait = WebDriverWait(browser, WAIT)
    browser.get(live_server.url + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(seen.presence_of_element_located((By.ID, "user-tools")))

    browser.get(live_server.url + reverse("admin:async_jobs_error_changelist"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 2
    assert browser.find_elements(By.NAME, "action") == []  # nothing to act on
    assert browser.find_elements(By.CSS_SELECTOR, ".object-tools a.addlink") == []
    filters = browser.find_element(By.ID, "changelist-filter")
    filters.find_element(By.LINK_TEXT, "builtins.RuntimeError").click()
    wait.until(seen.url_contains("exception_class=builtins.RuntimeError"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1
    assert "failed after writing first" in rows[0].text
    assert "shop.tasks.write_then_fail" in rows[0].text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "admin_errors.png"))

    # The error's page: its traceback, read-only; then its job.
    rows[0].find_element(By.PARTIAL_LINK_TEXT, "builtins.RuntimeError").click()
    traceback = wait.until(
        seen.visibility_of_element_located(
            (By.CSS_SELECTOR, "pre.async-jobs-traceback")
        )
    )
    assert "RuntimeError: failed after writing first" in traceback.text
    assert browser.find_elements(By.NAME, "_save") == []
    assert browser.find_elements(By.CSS_SELECTOR, "a.deletelink") == []
    browser.find_element(By.LINK_TEXT, f"#{first.pk}").click()
    wait.until(seen.url_contains(f"/admin/async_jobs/job/{first.pk}/change/"))
    assert "shop.tasks.write_then_fail" in browser.page_source


def test_the_overview_chart_of_finished_jobs_per_hour(
    live_server, browser, django_user_model
):
    from selenium.webdriver.common.by import By

    from async_jobs.overview import hourly_outcomes

    django_user_model.objects.create_superuser("operator", password="s3cret-pass")
    browser.get(live_server.url + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # A day of work: busy in the daytime, a bad hour of failures.
    now = timezone.now()
    jobs = []
    for hours_ago in range(24):
        busy = 40 + 30 * ((hours_ago + now.hour) % 24 in range(8, 19))
        failed = 25 if hours_ago == 5 else hours_ago % 3
        for n in range(busy + failed):
            jobs.append(
                Job(
                    name="shop.tasks.noop",
                    status=Job.Status.FAILED if n < failed else Job.Status.SUCCEEDED,
                    finished=now - timedelta(hours=hours_ago, minutes=n % 50),
                )
            )
    Job.objects.bulk_create(jobs)
    outcomes = hourly_outcomes()

    browser.get(live_server.url + reverse("admin:async_jobs_job_overview"))
    chart = browser.find_element(By.CSS_SELECTOR, "figure.async-jobs-chart")
    svg = chart.find_element(By.TAG_NAME, "svg")
    assert svg.size["width"] > 600 and svg.size["height"] > 150  # laid out, visible
    failed_bars = svg.find_elements(By.CSS_SELECTOR, "rect.failed")
    assert len(failed_bars) == sum(1 for n in outcomes.failed if n)
    tallest = max(failed_bars, key=lambda bar: bar.size["height"])
    assert tallest.size["height"] > 4 * min(bar.size["height"] for bar in failed_bars)
    assert f"Failed for good: {sum(outcomes.failed):,}" in chart.text
    browser.execute_script("arguments[0].scrollIntoView()", chart)
    ARTIFACTS.mkdir(exist_ok=True)
    assert chart.screenshot(str(ARTIFACTS / "admin_overview_chart.png"))
    browser.save_screenshot(str(ARTIFACTS / "admin_queue_overview_chart_page.png"))
