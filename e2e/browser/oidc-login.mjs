// The OIDC login as a person walks it, in Debian's headless Chromium: open a page behind the
// gateway, land on the provider's login form, type a user name and password and submit, accept
// the consent, come back to the page the app returns; save a screenshot of it.
//
// Environment: START_URL (a page behind the gateway), LOGIN_USER, SCREENSHOT (a .png path).
// Prints one JSON line: {url, text, steps, cookies: [{name, value, secure, httpOnly, sameSite}]}.
import { chromium } from 'playwright-core';

const start = process.env.START_URL;
const user = process.env.LOGIN_USER;
const shot = process.env.SCREENSHOT;
const origin = new URL(start).origin;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  // Only the page itself goes to the app (the test counts the requests the app serves).
  await page.route('**/favicon.ico', (route) => route.abort());
  const steps = [];
  page.setDefaultTimeout(15000);

  // 1. The page: the gateway sends the browser to the provider, which shows its login form.
  await page.goto(start);
  await page.waitForSelector('input[name="login"]');
  steps.push(`login form at ${new URL(page.url()).origin}${new URL(page.url()).pathname}`);

  // 2. Type the user name and a password, submit as a person would (the button).
  await page.fill('input[name="login"]', user);
  await page.fill('input[name="password"]', 'any password');
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);

  // 3. The consent page: accept.
  if (!page.url().startsWith(origin)) {
    await page.waitForSelector('button[type="submit"]');
    steps.push(`consent at ${new URL(page.url()).pathname}`);
    await Promise.all([
      page.waitForURL((u) => u.toString().startsWith(origin) && !u.pathname.startsWith('/oauth2/')),
      page.click('button[type="submit"]'),
    ]);
  }

  // 4. Back at the page the app returns.
  await page.waitForLoadState('load');
  steps.push(`back at ${page.url()}`);
  // The app answers JSON: Chromium shows it as text in a <pre>.
  const text = await page.evaluate(() => (document.querySelector('pre') || document.body).innerText);
  await page.screenshot({ path: shot, fullPage: true });
  const cookies = (await context.cookies(origin)).map((c) => ({
    name: c.name, value: c.value, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite,
  }));
  console.log(JSON.stringify({ url: page.url(), text, steps, cookies }));
} finally {
  await browser.close();
}
