// CORS as a browser enforces it: pages on two loopback origins call the mesh (http://echo:8000,
// reached through the sidecar's outbound listener as the HTTP proxy) with fetch. Prints one JSON
// object: per page origin, what each call gave the page (status and the exposed header) or the
// error the browser raised.
import { chromium } from 'playwright-core';

const { PROXY, PAGES, TARGET } = process.env;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
  args: ['--no-sandbox', `--proxy-server=${PROXY}`],
});
const out = {};
for (const pageUrl of PAGES.split(',')) {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  out[new URL(pageUrl).origin] = await page.evaluate(async (target) => {
    const call = async (init) => {
      try {
        const r = await fetch(target, init);
        return { status: r.status, xApp: r.headers.get('x-app'), body: (await r.text()).length > 0 };
      } catch (e) {
        return { error: String(e) };
      }
    };
    return {
      simple: await call({}),
      preflighted: await call({ method: 'PUT', headers: { 'x-custom': '1', 'content-type': 'application/json' }, body: '{}' }),
      credentials: await call({ credentials: 'include' }),
    };
  }, TARGET);
  await page.close();
}
console.log(JSON.stringify(out));
await browser.close();
