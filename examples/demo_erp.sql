-- The demo ERP: a wholesaler's database with ERP-style column names.
-- {products}, {customers}, {locations} are filled in by `kanal demo` (scale).
create table erp_items (
    item_no text primary key, ean text, item_name text, long_text text, brand text, item_group text,
    base_unit text, gross_weight numeric(10,3), attributes jsonb, parent_item text, blocked boolean,
    tax_code text, changed_at timestamptz not null);
insert into erp_items
select 'ART-' || lpad(g::text, 6, '0'), lpad((4000000000000 + g)::text, 13, '0'),
       (array['Hammer','Drill','Saw','Wrench','Screwdriver','Pliers','Tape','Level'])[g % 8 + 1] || ' ' || g,
       'Professional tool, series ' || (g % 97), (array['Bosch','Makita','Wera','Knipex','Stanley'])[g % 5 + 1],
       'TOOLS/' || (g % 40), (array['PCE','PCE','PCE','BOX','M'])[g % 5 + 1], round((g % 5000) / 1000.0, 3),
       jsonb_build_object('color', (array['red','blue','green','black'])[g % 4 + 1], 'voltage', 12 + g % 3 * 6),
       case when g % 10 = 0 and g > 10 then 'ART-' || lpad((g - 1)::text, 6, '0') end,
       g % 50 = 0, (array['standard','reduced'])[g % 2 + 1],
       timestamptz '2025-01-01' + g * interval '7 seconds'
from generate_series(1, {products}) g;

create table erp_customers (
    cust_no text primary key, cust_kind char(1), company_name text, contact_name text, email text, phone text,
    vat_reg_no text, currency text, price_group text,
    bill_street text, bill_zip text, bill_city text, bill_country text,
    ship_street text, ship_zip text, ship_city text, ship_country text, changed_at timestamptz not null);
insert into erp_customers
select 'C' || lpad(g::text, 6, '0'), case when g % 4 = 0 then 'P' else 'B' end,
       case when g % 4 <> 0 then 'Company ' || g || ' GmbH' end,
       (array['Anna','Ben','Clara','David','Eva'])[g % 5 + 1] || ' ' || (array['Meier','Schulz','Weber','Fischer'])[g % 4 + 1],
       'buyer' || g || '@example.com', '+49 30 ' || (1000000 + g), case when g % 4 <> 0 then 'DE' || (100000000 + g) end,
       (array['EUR','EUR','EUR','CHF','GBP'])[g % 5 + 1], 'PG' || (g % 12),
       'Hauptstr. ' || (g % 200 + 1), lpad((10000 + g % 89999)::text, 5, '0'),
       (array['Berlin','Hamburg','Munich','Cologne','Zurich','London'])[g % 6 + 1], (array['DE','DE','DE','DE','CH','GB'])[g % 6 + 1],
       case when g % 3 = 0 then 'Lager ' || g end, case when g % 3 = 0 then '20095' end,
       case when g % 3 = 0 then 'Hamburg' end, case when g % 3 = 0 then 'DE' end,
       timestamptz '2025-01-01' + g * interval '13 seconds'
from generate_series(1, {customers}) g;
-- a few records a careful ERP would not have: they end in the dead-letter queue
update erp_customers set bill_country = 'Germany' where cust_no in ('C000007', 'C000017');

-- prices already carry canonical names: no mapping needed (identity)
create table erp_prices (
    sku text not null, price_list text not null, customer_no text, currency text not null, min_qty numeric(12,3),
    amount numeric(12,2), valid_from timestamptz, valid_to timestamptz, updated_at timestamptz not null);
-- list prices (no customer) and tier prices
insert into erp_prices
select 'ART-' || lpad(g::text, 6, '0'), 'retail', null, 'EUR', q, round((5 + g % 400) * (1 - (q - 1) / 1000.0), 2),
       timestamptz '2025-01-01', null, timestamptz '2025-02-01' + g * interval '1 second'
from generate_series(1, {products}) g, unnest(array[1, 10, 100]) q;
-- customer-specific prices: most of the volume (nine customers per article)
insert into erp_prices
select 'ART-' || lpad(p::text, 6, '0'), 'contract', 'C' || lpad(c::text, 6, '0'), 'EUR', 1,
       round((5 + p % 400) * (0.80 + (c % 15) / 100.0), 2), timestamptz '2025-01-01', timestamptz '2026-12-31',
       timestamptz '2025-03-01' + (p + c) * interval '1 second'
from (select p, (p * 37 + i * greatest({customers} / 9, 1)) % {customers} + 1 as c
      from generate_series(1, {products}) p, generate_series(0, 8) i) pc;
insert into erp_prices values ('ART-000001', 'contract', 'C000001', 'EURO', 1, 9.99, null, null, now());

create table erp_stock (sku text, location text, on_hand numeric(12,3), reserved numeric(12,3), available numeric(12,3),
                        updated_at timestamptz not null, primary key (sku, location));
insert into erp_stock
select 'ART-' || lpad(g::text, 6, '0'), l, (g * 7 + length(l)) % 500, (g % 7), ((g * 7 + length(l)) % 500) - (g % 7),
       timestamptz '2025-04-01' + g * interval '1 second'
from generate_series(1, {products}) g, unnest(array[{locations}]) l;
alter table erp_prices replica identity full;  -- no primary key: deletes need the whole old row
analyze;
