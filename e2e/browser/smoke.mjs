// Smoke check of the browser set-up: open a data URL in Debian's headless Chromium and print its title.
import { chromium } from 'playwright-core';
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage();
await page.goto('data:text/html,<title>wasmesh-browser-ok</title>');
console.log(await page.title());
await browser.close();
