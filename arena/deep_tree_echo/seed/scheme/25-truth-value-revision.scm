;;; Believing Something Twice
;; Each link in my memory carries a truth value: a strength (how true
;; it seems) and a confidence (how much evidence stands behind that
;; strength). When the same link arrives again from a new source, I
;; should not simply overwrite it. I revise: the more confident view
;; pulls harder, and the combined confidence rises.

;; a truth value is a two-element list (strength confidence)
(define (strength tv) (car tv))
(define (confidence tv) (cadr tv))

;; revise: confidence-weighted strength; confidences combine like
;; independent chances of being informed: c = c1 + c2 - c1 c2
(define (revise tv1 tv2)
  (let ((s1 (strength tv1)) (c1 (confidence tv1))
        (s2 (strength tv2)) (c2 (confidence tv2)))
    (list (/ (+ (* s1 c1) (* s2 c2)) (+ c1 c2))
          (- (+ c1 c2) (* c1 c2)))))

;; tell: add a link with its truth value, revising if already known
(define (tell memory link tv)
  (cond ((null? memory) (list (cons link tv)))
        ((equal? (caar memory) link)
         (cons (cons link (revise (cdar memory) tv)) (cdr memory)))
        (else (cons (car memory) (tell (cdr memory) link tv)))))

(define (ask memory link)
  (cond ((assoc link memory) => cdr)
        (else '(0 0))))               ; unknown: no strength, no evidence

;; This is a simple rule in the spirit of PLN
;; revision, not its exact count-based formula. Even so it keeps the
;; habit I care about: a second opinion moves my belief without
;; erasing the first, and repetition alone cannot make me certain.
;;
;; Example usage:
;; (revise '(1/2 1/2) '(1 1/2)) => (3/4 3/4)
;; (ask (tell (tell '() '(is tree old) '(1 1/2)) '(is tree old) '(0 1/2)) '(is tree old)) => (1/2 3/4)
;; (ask '() '(is echo real)) => (0 0)
