-- modality_profiles: per planted category profile, the click rate and how strongly the true
-- click probability follows item quality (the statistics modality).
-- inputs:  truth.exposures, truth.items, truth.categories
-- outputs: profile, categories, exposures, mean_p_click, corr_p_click_quality
-- params:  none
SELECT k.profile,
       count(DISTINCT k.category_id) AS categories,
       count(*) AS exposures,
       round(avg(t.p_click), 4) AS mean_p_click,
       round(corr(t.p_click, i.quality), 3) AS corr_p_click_quality
FROM truth.exposures t
JOIN truth.items i ON i.item_id = t.item_id
JOIN truth.categories k ON k.category_id = i.category_id
GROUP BY k.profile
ORDER BY k.profile
